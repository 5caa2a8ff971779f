"""The real default model and embedder on the demo knowledge base."""

import json

import pytest

from affinage.cli import main
from affinage.core.metrics import source_matches
from tests.conftest import DEMO_KB, GOLDEN

# Three golden questions from different sections of the demo knowledge base.
QUESTIONS = [4, 20, 41]


@pytest.mark.integration
def test_demo_kb_answers_cite_the_right_source(tmp_path, default_model_dir, capsys):
    home = tmp_path / "home"
    home.mkdir()
    # Reuse the session's conversion instead of converting the GGUF again.
    (home / "models").symlink_to(default_model_dir.parent, target_is_directory=True)
    assert main(["--home", str(home), "ingest", str(DEMO_KB)]) == 0
    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    for i in QUESTIONS:
        capsys.readouterr()
        assert main(["--home", str(home), "ask", golden[i]["question"], "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["model"] == "SmolLM2-135M-Instruct"
        assert answer["answer"].strip()
        cited = [c["source"] for c in answer["citations"]]
        assert any(source_matches(c, golden[i]["source"]) for c in cited[:2]), (golden[i], cited)
