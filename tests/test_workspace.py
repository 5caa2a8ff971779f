"""The workspace is private whatever the caller's umask: folders 0700, files 0600, through the CLI's entry point."""

import logging
import os
import stat

import pytest

from affinage.cli import main
from affinage.workspace import secure_workspace
from tests.conftest import REPO


@pytest.fixture
def loose_umask():
    """The common default, under which an unsecured workspace came out 755/644; the test's own umask comes back."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes_that_are_not_private(root):
    wrong = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if stat.S_IMODE(info.st_mode) != want:
            wrong[str(path.relative_to(root))] = oct(stat.S_IMODE(info.st_mode))
    return wrong


def test_cli_commands_leave_only_private_files(loose_umask, home, kb, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("AFFINAGE_CHAT_MODEL", str(tiny_model_dir))  # no config.toml: the CLI creates the home
    monkeypatch.setenv("AFFINAGE_MAX_NEW_TOKENS", "4")
    assert main(["--home", str(home), "ingest", str(kb)]) == 0
    assert main(["--home", str(home), "examples", "import", str(REPO / "affinage" / "demo" / "examples.jsonl")]) == 0
    assert main(["--home", str(home), "ask", "How long is the reset link valid?", "--json"]) == 0
    assert main(["--home", str(home), "keys", "create", "--role", "agent", "--name", "ann"]) == 0
    capsys.readouterr()
    written = {p.name for p in home.rglob("*")}
    assert {"affinage.db", "index", "faiss.index", "chunks.jsonl", "CURRENT"} <= written  # the walk saw real work
    assert modes_that_are_not_private(home) == {}
    assert os.umask(0o022) == 0o022  # main gave an in-process caller its umask back


def test_an_existing_open_home_is_tightened_once(loose_umask, home, caplog):
    home.mkdir()
    home.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="affinage.workspace"):
        assert main(["--home", str(home), "keys", "list"]) == 0
        assert main(["--home", str(home), "keys", "list"]) == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert [r.getMessage() for r in caplog.records] == [f"workspace {home} was mode 0755; tightened to 0700: it holds "
                                                        "questions, corrections and keys"]
    assert modes_that_are_not_private(home) == {}


def test_secure_workspace_makes_later_writes_private_and_returns_the_old_umask(loose_umask, tmp_path):
    home = tmp_path / "a" / "home"
    previous = secure_workspace(home)
    try:
        (home / "sub").mkdir()
        (home / "sub" / "file").write_text("x")
        assert previous == 0o022
        assert modes_that_are_not_private(home) == {}
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700  # a parent it had to make is private too
    finally:
        os.umask(previous)


def test_no_home_sets_only_the_umask(loose_umask, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    previous = secure_workspace(None)
    os.umask(previous)
    assert previous == 0o022 and list(tmp_path.iterdir()) == []
