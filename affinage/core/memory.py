"""Peak resident memory of this process, per stage: Linux keeps a high-water mark (VmHWM) that writing 5 to
/proc/self/clear_refs resets, so each stage of a run can report its own peak rather than the process's."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new high-water mark at the current resident size; False where the kernel offers no reset."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """The resident high-water mark since the last reset (else since the process began), in bytes."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024
