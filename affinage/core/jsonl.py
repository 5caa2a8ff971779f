"""Reading a JSONL file a person wrote: every error names the file and the line, so it can be fixed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def numbered_lines(path: Path) -> Iterator[tuple[int, object]]:
    """Each non-blank line's number (from 1) and parsed value; a line that is not JSON raises a ValueError naming it."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
