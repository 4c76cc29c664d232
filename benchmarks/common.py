"""Shared by the benchmark scripts: the machine they ran on (the processor and its vector flags:
a speed figure holds for the CPU it was measured on), and running one contender in a child
process of its own, so that each peak-memory figure is that contender's alone."""

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The processor's model name as lscpu shows it (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def cpu_flags() -> str:
    """The vector-instruction flags that matter for fp32, bf16 and int8 matrix products."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    except (OSError, AttributeError):
        return "?"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
              "amx_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/fma/avx512"


def run_child(script: str, args, env=None) -> dict:
    """Run `python script --child *args` from the repository's root; the child prints its
    results as one JSON line, last. Its error output goes into the exception if it fails."""
    args = [str(a) for a in args]
    out = subprocess.run([sys.executable, str(Path(script).resolve()), "--child", *args],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
