"""Peak resident memory of this process, per stage: Linux keeps a high-water mark (VmHWM) that writing 5 to
/proc/self/clear_refs resets, so each stage of a run can report its own peak rather than the process's.

A part of a stage can measure its own peak too (``measured``): its reset erases the kernel's mark, so the mark it
erased, and the part's own peak, are carried in ``_floor`` and the enclosing stage still reads its true peak.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# glibc serves allocations under its mmap threshold from its heap, and raises that threshold (up to 32 MiB) each time
# a mapped block is freed; a training step's activations (4-16 MiB each, of mixed lifetimes under activation
# checkpointing) then fragment the heap: one step of the demo's run config (2 packed rows of ~1000 tokens, default
# model) grew the process by 3.3 GiB where, with every block from 4 MiB up in its own mapping, it grew by 1.0 GiB.
# bench/cycle_memory.py (2 CPU cores): one candidate's training peaked at 1.90 GiB instead of 4.05, its gating at
# 2.66 instead of 4.99, and 3 steps trained in 72.7 s instead of 78.6 (mapping costs page faults, the heap cost more).
HEAP_MMAP_THRESHOLD = 4 * 2**20
M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
_floor = 0  # the highest peak that resets inside the current span erased from the kernel's mark, in bytes


def reset_peak() -> bool:
    """Start a new high-water mark at the current resident size; False where the kernel offers no reset."""
    global _floor
    _floor = 0
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    """A size line of /proc/self/status (``VmHWM``, ``VmRSS``), in bytes; None where the kernel does not say."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def kernel_peak() -> int:
    """The kernel's resident high-water mark since its last reset (else since the process began), in bytes."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def resident_bytes() -> int:
    """The resident size now (VmRSS), in bytes; 0 where the kernel does not say."""
    return _status_bytes("VmRSS") or 0


def peak_bytes() -> int:
    """The resident high-water mark since the last ``reset_peak``, parts measured inside it included, in bytes."""
    return max(kernel_peak(), _floor)


@contextmanager
def measured() -> Iterator[dict]:
    """Measure the peak of a part of a stage: yields a dict whose ``peak_bytes`` is set when the part ends.

    The enclosing stage's ``peak_bytes`` still counts what came before the part and the part itself."""
    global _floor
    before = peak_bytes()
    reset_peak()
    figures: dict = {}
    try:
        yield figures
    finally:
        figures["peak_bytes"] = peak_bytes()
        _floor = max(before, figures["peak_bytes"])


def gib(n: int) -> float:
    return round(n / 2**30, 2)


def bound_heap(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping from now on, for the whole process (see
    ``HEAP_MMAP_THRESHOLD``); False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def release() -> None:
    """Collect unreachable objects and hand the heap's free pages back to the system: glibc keeps memory a process
    freed resident (and counted in its RSS) until it is trimmed, so a model freed after training would otherwise
    still weigh on every stage after it."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Hand the pages glibc's heaps hold free back to the system (nothing elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
