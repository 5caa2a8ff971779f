"""The CLI, called in-process through main() except where the exit code of the real command matters."""

import json
import os
import subprocess
import sys

import pytest

from affinage.cli import main
from tests.conftest import REPO


@pytest.fixture
def cli_home(home, tiny_model_dir):
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f'chat_model = "{tiny_model_dir}"\nmax_new_tokens = 6\n')
    return home


def test_ingest_reports_each_change(cli_home, kb, capsys):
    assert main(["--home", str(cli_home), "ingest", str(kb)]) == 0
    out = capsys.readouterr().out
    assert "added     billing/refunds.md" in out and "3 added" in out
    (kb / "account" / "passwords.md").unlink()
    (kb / "readme.docx").write_bytes(b"x")
    assert main(["--home", str(cli_home), "ingest", str(kb), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == ["account/passwords.md"]
    assert report["skipped"] == [{"path": "readme.docx", "reason": "unsupported type .docx"}]
    assert sorted(report["unchanged"]) == ["billing/refunds.md", "sso.html"]


def test_ask_json_shape(cli_home, kb, capsys, tiny_model_dir):
    main(["--home", str(cli_home), "ingest", str(kb)])
    capsys.readouterr()
    assert main(["--home", str(cli_home), "ask", "Where do I paste the Okta metadata URL?", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"answer", "citations", "interaction_id", "model"}
    assert answer["citations"][0]["source"] == "sso.html#okta-setup"
    assert set(answer["citations"][0]) == {"source", "score", "text"}
    assert isinstance(answer["citations"][0]["score"], float)
    assert answer["model"] == tiny_model_dir.name and len(answer["interaction_id"]) == 32


def test_eval_writes_results_and_metrics(cli_home, kb, tmp_path, capsys):
    main(["--home", str(cli_home), "ingest", str(kb)])
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "How long is the reset link valid?", "answer": "2 hours", "source": "account/passwords.md#reset-your-password"}) + "\n"
        + json.dumps({"question": "Where do I paste the Okta metadata URL?", "answer": "Settings > Security", "source": "sso.html#okta-setup", "key_fact": "Settings > Security"}) + "\n"
        + json.dumps({"question": "Are monthly plans refunded?", "answer": "No."}) + "\n"
    )
    capsys.readouterr()
    out = tmp_path / "results.jsonl"
    assert main(["--home", str(cli_home), "eval", str(questions), "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    assert {"question", "reference", "answer", "citations", "latency_s"} <= set(lines[0])
    assert metrics["n"] == 3 and metrics["hit@1"] == 1.0 and metrics["hit@5"] == 1.0
    assert 0.0 <= metrics["token_f1"] <= 1.0 and 0.0 <= metrics["rouge_l"] <= 1.0
    assert metrics["mean_latency_s"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "/no/such/folder"], "no such file or folder: /no/such/folder"),
        (["ask", "   "], "the question is empty"),
        (["eval", "/no/such.jsonl", "--out", "x.jsonl"], "No such file"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(cli_home, args, message, capsys):
    assert main(["--home", str(cli_home), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_eval_line_is_named(cli_home, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": ""}\n')
    assert main(["--home", str(cli_home), "eval", str(bad), "--out", str(tmp_path / "r.jsonl")]) == 1
    assert "bad.jsonl:2: 'question' must be a non-empty string" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.multiprocess
def test_broken_config_and_unsupported_file_through_the_real_command(tmp_path):
    env = {**os.environ, "AFFINAGE_HOME": str(tmp_path / "h")}
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "config.toml").write_text("top_k = -3\n")
    run = subprocess.run([sys.executable, "-m", "affinage.cli", "ingest", str(REPO / "README.md")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip() == "affinage: error: invalid setting top_k: Input should be greater than or equal to 1"

    (tmp_path / "h" / "config.toml").write_text("")
    sheet = tmp_path / "sheet.xlsx"
    sheet.write_bytes(b"PK")
    run = subprocess.run([sys.executable, "-m", "affinage.cli", "ingest", str(sheet)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 1 and "unsupported file type '.xlsx'" in run.stderr
    assert not (tmp_path / "h" / "index").exists()


def test_examples_import_and_list(cli_home, tmp_path, capsys):
    assert main(["--home", str(cli_home), "examples", "import", str(REPO / "affinage" / "demo" / "examples.jsonl")]) == 0
    assert main(["--home", str(cli_home), "examples", "import", str(REPO / "affinage" / "demo" / "examples.jsonl")]) == 0
    assert "0 examples added" in capsys.readouterr().out
    assert main(["--home", str(cli_home), "examples", "list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6


def test_keys_create_list_revoke(home, capsys):
    from agent.service.auth import authenticate
    from affinage.core.store import Store

    assert main(["--home", str(home), "keys", "create", "--role", "operator", "--name", "olga"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]  # the key alone on the last line
    assert key.startswith("afk_") and " " not in key
    assert authenticate(Store(f"sqlite:///{home / 'affinage.db'}"), key).role == "operator"
    assert main(["--home", str(home), "keys", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert json.loads(listed)[0]["name"] == "olga" and key not in listed
    assert main(["--home", str(home), "keys", "create", "--role", "agent", "--name", " olga "]) == 1
    assert "a key named 'olga' already exists" in capsys.readouterr().err  # names are stripped
    assert main(["--home", str(home), "keys", "create", "--role", "agent", "--name", "  "]) == 1
    assert "a key needs a non-empty name" in capsys.readouterr().err
    assert main(["--home", str(home), "keys", "create", "--role", "agent", "--name", " ann\t"]) == 0
    assert "Created agent key 'ann'." in capsys.readouterr().out
    assert main(["--home", str(home), "keys", "revoke", "olga"]) == 0
    assert authenticate(Store(f"sqlite:///{home / 'affinage.db'}"), key) is None
    assert main(["--home", str(home), "keys", "revoke", "olga"]) == 1


def test_serve_runs_uvicorn_with_its_limits(tmp_path):
    from affinage.cli.service import KEEP_ALIVE_SECONDS, MAX_HEADER_BYTES, server_config
    from affinage.core.settings import load_settings

    settings = load_settings(tmp_path, max_connections=40, shutdown_grace_seconds=7)
    config = server_config(object(), settings, "127.0.0.1", 8123)
    assert (config.host, config.port, config.http) == ("127.0.0.1", 8123, "h11")
    assert config.limit_concurrency == 40 and config.timeout_graceful_shutdown == 7
    assert config.timeout_keep_alive == KEEP_ALIVE_SECONDS == 5
    assert config.h11_max_incomplete_event_size == MAX_HEADER_BYTES
    assert load_settings(tmp_path).max_connections > load_settings(tmp_path).max_queue  # the app's JSON 503 comes first
