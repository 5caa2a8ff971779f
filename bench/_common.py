"""What every benchmark script shares: the machine it ran on, its command line, its BENCHMARKS.md section, and
the interval of a measured rate."""

from __future__ import annotations

import math
import os
import platform
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery figure below is written by a script in bench/; do not edit by hand.\n"


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a rate: how far the trial count lets the estimate be trusted."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# The widest vector instructions a CPU has, by the /proc/cpuinfo flag that shows them: one model name ("AMD EPYC")
# covers machines whose matrix speed differs twofold (a float32 demo training step: 24-29 s on a Zen4 with
# AVX512-BF16, 48-55 s on an AVX2-only one)
VECTOR_ISA = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"))


def cpu_model() -> str:
    """The model name and its widest vector instructions, e.g. "AMD EPYC (AVX2)"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    isa = next((label for flag, label in VECTOR_ISA if flag in flags), None)
    return f"{name} ({isa})" if isa else name


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_gib() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError):
        return "n/a"


def load_average() -> float | None:
    """The 1-minute load: a busy machine inflates every timing, so each section records it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def command_line(script: str, argv: list[str]) -> str:
    """The exact command that reproduces a run, relative to the repository."""
    exe = Path(sys.executable)
    try:
        python = str(exe.relative_to(ROOT)) if exe.is_absolute() else str(exe)
    except ValueError:
        python = str(exe)
    return shlex.join(["HF_HUB_OFFLINE=1", python, str(Path(script).resolve().relative_to(ROOT)), *argv])


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def update_section(section: str, name: str, path: Path = BENCHMARKS) -> None:
    """Replace one script's section (markers included in ``section``), read right before an atomic write."""
    from affinage.core.atomic import atomic_write_text

    start, end = markers(name)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(path, text)


def publish(text: str, name: str, write: bool) -> int:
    """Print a script's section and, unless told not to, put it into BENCHMARKS.md; the script's exit code."""
    print(text)
    if write:
        update_section(text, name)
    return 0
