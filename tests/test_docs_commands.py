"""Every command README.md and docs/*.md show can be run: `affinage <subcommands> --help` succeeds for each
`affinage …` line (in fenced code blocks and inline code spans, also after `$ `, `VAR=value`, `sudo -u USER`,
`.venv/bin/` or `-m affinage.cli`), and each `make <target>` shown is a target of the Makefile.

Only the argument parser runs (in-process, nothing is executed), so a doc that names a subcommand the CLI lacks fails
here in well under a second."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from affinage import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_SEPARATORS = re.compile(r"&&|\|\||;|(?<!\\)\|")  # `\|` is a pipe escaped inside a Markdown table cell
_COMMENT = re.compile(r"(^|\s)#(\s.*)?$")
# a command at the start of a shell line: `affinage …`, after `$ `, `VAR=value ` assignments or `sudo -u USER `
_AT_START = re.compile(
    r"^\s*(?:\$\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:sudo\s+-u\s+\S+\s+)?affinage\s+(?P<rest>.*)$")
# or anywhere after a virtual environment's bin folder, or as a module: `/opt/…/.venv/bin/affinage …`,
# `-m affinage.cli …`
_ANYWHERE = re.compile(r"(?:\.venv/bin/affinage|-m\s+affinage\.cli)\s+(?P<rest>.*)$")
_MAKE = re.compile(r"^\s*(?:\$\s+)?make\s+(?P<rest>.*)$")
_WORD = re.compile(r"^[a-z][a-z0-9-]*$")  # a subcommand; placeholders (COMMAND, ID, "QUESTION", [list|…]) are not


@dataclass(frozen=True)
class Shown:
    doc: str
    line: int
    text: str  # the command as the doc shows it


def code_texts(markdown: str) -> list[tuple[int, str]]:
    """(line number, text) for each line of a fenced code block (continuation lines joined) and each inline code
    span (a span may wrap onto the next line of its paragraph)."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    pending: tuple[int, str] | None = None  # a shell line ending in a backslash, waiting for its continuation
    paragraph: list[tuple[int, str]] = []

    def flush_paragraph() -> None:
        if not paragraph:
            return
        text = "\n".join(line for _, line in paragraph)
        starts = [0]
        for _, line in paragraph:
            starts.append(starts[-1] + len(line) + 1)
        for match in _SPAN.finditer(text):
            row = max(i for i, start in enumerate(starts[:-1]) if start <= match.start())
            out.append((paragraph[row][0], match.group(1).replace("\n", " ")))
        paragraph.clear()

    for number, line in enumerate(markdown.split("\n"), 1):
        marker = _FENCE.match(line)
        if fence is None and marker:
            flush_paragraph()
            fence = marker.group(1)
            continue
        if fence is not None:
            if marker and marker.group(1) == fence:
                fence, pending = None, None
                continue
            if pending is not None:
                number, line = pending[0], pending[1] + " " + line.strip()
                pending = None
            if line.rstrip().endswith("\\"):
                pending = (number, line.rstrip()[:-1])
                continue
            out.append((number, _COMMENT.sub("", line)))
        elif line.strip():
            paragraph.append((number, line))
        else:
            flush_paragraph()
    flush_paragraph()
    return out


def shown_commands(markdown: str, doc: str = "<text>") -> tuple[list[Shown], list[Shown]]:
    """The `affinage …` and `make …` commands a Markdown text shows: (affinage commands, make commands), each with
    what follows the program name."""
    affinage: list[Shown] = []
    make: list[Shown] = []
    for number, text in code_texts(markdown):
        for segment in _SEPARATORS.split(text):
            match = _AT_START.match(segment) or _ANYWHERE.search(segment)
            if match:
                affinage.append(Shown(doc, number, match.group("rest").strip()))
            match = _MAKE.match(segment)
            if match:
                make.append(Shown(doc, number, match.group("rest").strip()))
    return affinage, make


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def subcommand_path(rest: str, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The leading words of `affinage REST` that name subcommands (and a leaf's first positional when it is a fixed
    choice, as `db upgrade` or `examples import`), after the global options (`--home DIR`)."""
    parser = parser or cli.build_parser()
    words = [w.strip("'\"") for w in rest.split()]
    words = [w for w in words if w]
    i = 0
    while i < len(words) and words[i].startswith("-"):  # global options, before the first subcommand only
        name = words[i].split("=", 1)[0]
        action = parser._option_string_actions.get(name)
        i += 2 if action is not None and _takes_value(action) and "=" not in words[i] else 1
    path: list[str] = []
    current = parser
    while i < len(words) and _WORD.match(words[i]):
        subparsers = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers:
            path.append(words[i])
            current = subparsers[0].choices.get(words[i])
            if current is None:  # unknown: keep it, so that --help fails and names it
                break
            i += 1
            continue
        positionals = [a for a in current._actions if not a.option_strings]
        if positionals and positionals[0].choices is not None:
            path.append(words[i])
        break
    return path


def help_error(path: list[str]) -> str | None:
    """None when `affinage PATH --help` succeeds, else what argparse said."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.build_parser().parse_args([*path, "--help"])
        except SystemExit as stop:
            if stop.code in (0, None):
                return None
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit code {stop.code}"
    return "--help did not exit"


def makefile_targets() -> set[str]:
    targets: set[str] = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(("\t", "#", " ")):
            continue
        match = re.match(r"^([^:=#\s][^:=#]*?)\s*::?(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def make_targets(rest: str) -> list[str]:
    """The targets of `make REST`: the words before any comment that are neither options nor VAR=value."""
    targets = []
    for word in rest.split():
        if word.startswith("#"):
            break
        if word.startswith("-") or "=" in word:
            continue
        if not re.match(r"^[A-Za-z0-9_.-]+$", word):
            break
        targets.append(word)
    return targets


def problems(markdown: str, doc: str = "<text>") -> list[str]:
    """Every command shown in MARKDOWN that cannot run, one line each."""
    affinage, make = shown_commands(markdown, doc)
    found = []
    for shown in affinage:
        path = subcommand_path(shown.text)
        error = help_error(path)
        if error:
            found.append(f"{shown.doc}:{shown.line}: `affinage {shown.text}` -> "
                         f"`affinage {' '.join(path)} --help`: {error}")
    targets = makefile_targets()
    for shown in make:
        for target in make_targets(shown.text):
            if target not in targets:
                found.append(f"{shown.doc}:{shown.line}: `make {shown.text}`: no target {target!r} in the Makefile")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_shown_runs(doc: Path) -> None:
    assert problems(doc.read_text(encoding="utf-8"), str(doc.relative_to(REPO))) == []


def test_the_docs_show_the_commands() -> None:
    """The extraction finds what the docs show, so the test above cannot pass by finding nothing."""
    paths: set[tuple[str, ...]] = set()
    makes: set[str] = set()
    for doc in DOCS:
        affinage, make = shown_commands(doc.read_text(encoding="utf-8"), doc.name)
        paths.update(tuple(subcommand_path(s.text)) for s in affinage)
        makes.update(t for s in make for t in make_targets(s.text))
    assert {("serve",), ("ask",), ("demo",), ("keys", "create"), ("db", "upgrade"), ("examples", "import"),
            ("forget",), ("train",), ("gate",), ("promote",), ("rollback",), ("worker",)} <= paths
    assert {"run", "test", "demo"} <= makes
    _, readme_make = shown_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert {t for s in readme_make for t in make_targets(s.text)} >= {"run", "test", "demo"}


def test_a_made_up_command_is_reported() -> None:
    text = """
Run `affinage --home DIR frobnicate --now` and:

```sh
$ affinage keys rotate NAME                 # no such key action
AFFINAGE_HOME=/srv/a .venv/bin/affinage db migrate
affinage --home /srv/affinage ingest /srv/kb && affinage models --json
make deploy
make run HOST=0.0.0.0
```
"""
    found = problems(text)
    assert len(found) == 4, found
    assert "`affinage frobnicate --help`" in found[0] and "invalid choice: 'frobnicate'" in found[0]
    assert "`affinage keys rotate --help`" in found[1]
    assert "`affinage db migrate --help`" in found[2]
    assert "no target 'deploy'" in found[3]


def test_reduction_to_the_subcommand_path() -> None:
    assert subcommand_path("--home /srv/affinage forget --reapply") == ["forget"]
    assert subcommand_path("--home=/srv/affinage keys create --role agent --name support") == ["keys", "create"]
    assert subcommand_path('ask "How do I reset my password?" --json') == ["ask"]
    assert subcommand_path("corrections approve FEEDBACK_ID") == ["corrections", "approve"]
    assert subcommand_path("demo --home NEW_DIR --json") == ["demo"]
    assert subcommand_path("--home DIR COMMAND") == []
    assert subcommand_path("--home /srv/affinage'") == []
    assert shown_commands("```sh\nVAR=1 \\\n    affinage serve --port 8080\n```\n")[0][0].text == "serve --port 8080"
    assert [s.text for s in shown_commands("`affinage worker\n--once` then `affinage\nrollback`")[0]] == [
        "worker --once", "rollback"]
