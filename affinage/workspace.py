"""The workspace is private: it holds raw questions, corrections and API key hashes, so nobody but its owner reads it.

One process-wide umask rather than a mode on each write: files are also created by SQLite (the database and its
-wal/-shm files), FAISS, safetensors and torch, which take no mode argument but all honour the umask.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("affinage.workspace")
PRIVATE_UMASK = 0o077  # files 0600, folders 0700, whatever the caller's umask was


def secure_workspace(home: str | os.PathLike | None) -> int:
    """Make everything this process creates from now on private, and ``home`` (when given) a 0700 folder.

    The CLI calls this before any work; a program that embeds affinage (``create_app``, ``Worker``, ``run_demo``)
    without the CLI should call it first too. An existing home with group or other bits is tightened, with one
    warning; one owned by someone else is left as it is, with a warning. Returns the previous umask, so that an
    in-process caller (a test) can restore it.
    """
    previous = os.umask(PRIVATE_UMASK)
    if home is None:
        return previous
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # parents made now are 0700 too, by the umask
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        try:
            home.chmod(0o700)
        except OSError as error:  # not ours (a shared mount): tightening is the owner's call
            log.warning("workspace %s is readable by others (mode %04o) and could not be tightened: %s",
                        home, mode, error)
        else:
            log.warning("workspace %s was mode %04o; tightened to 0700: it holds questions, corrections and keys",
                        home, mode)
    return previous
