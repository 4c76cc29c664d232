"""What every benchmark prints about the machine it ran on: the processor and its vector flags
(a speed figure holds for the CPU it was measured on)."""

import platform
import re
from pathlib import Path


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
    """The vector-instruction flags that matter for fp32 and bf16 matrix products."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    except (OSError, AttributeError):
        return "?"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/fma/avx512"
