"""tools/notebook_outputs.py: what a default run keeps of a cell's progress-bar output."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from notebook_outputs import merge_streams, resolve_carriage_returns  # noqa: E402


def test_carriage_returns_resolve_as_a_screen_shows_them():
    assert resolve_carriage_returns("10%|#  |\r50%|## |\r100%|###|\nEp 1\n") == "100%|###|\nEp 1\n"
    assert resolve_carriage_returns("a\r\nb") == "a\nb"  # a Windows line end is a line end


def test_each_refresh_of_a_bar_joins_the_stream_before_it_but_not_other_outputs():
    outputs = [{"output_type": "stream", "name": "stdout", "text": "training: 0%\r"},
               {"output_type": "stream", "name": "stdout", "text": "training: 50%\r"},
               {"output_type": "stream", "name": "stdout", "text": "training: 100%\nEp 1\n"},
               {"output_type": "stream", "name": "stderr", "text": "warning\n"},
               {"output_type": "display_data", "data": {}},
               {"output_type": "stream", "name": "stdout", "text": "after\n"}]
    merged = merge_streams(outputs)
    assert [o.get("name") for o in merged] == ["stdout", "stderr", None, "stdout"]
    assert merged[0]["text"] == "training: 100%\nEp 1\n"
    assert merged[3]["text"] == "after\n"
