"""`affinage train / models / promote / rollback` as an operator types them."""

import json
import os
import subprocess
import sys

import pytest

from affinage.cli import main
from tests.conftest import REPO
from tuning.registry import Registry


def cli(home, *args):
    return subprocess.run([sys.executable, "-m", "affinage.cli", "--home", str(home), *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_train_prints_the_candidate_alone_on_the_last_line(tiny_settings, tiny_model_dir, dataset, quick_config):
    home = tiny_settings.home
    (home / "config.toml").write_text(f'chat_model = "{tiny_model_dir}"\n')
    result = cli(home, "train", "--method", "sft", "--config", str(quick_config()))
    assert result.returncode == 0, result.stderr
    candidate = result.stdout.strip().splitlines()[-1]
    assert candidate.startswith("sft-") and " " not in candidate
    assert "4/4" in result.stderr  # the progress bar

    listed = cli(home, "models", "--json")
    models = json.loads(listed.stdout)
    assert models["active"] == "base" and models["versions"][0]["id"] == candidate
    assert models["versions"][0]["state"] == "candidate" and models["versions"][0]["metrics"]["steps"] == 4

    refused = cli(home, "promote", candidate)
    assert refused.returncode == 1 and "only a version that passed its gates" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    Registry.open(tiny_settings).record_gate(candidate, True, {})
    assert cli(home, "promote", candidate).returncode == 0
    assert json.loads(cli(home, "models", "--json").stdout)["active"] == candidate
    back = cli(home, "rollback")
    assert back.returncode == 0 and "base is active again" in back.stdout


def test_bad_training_input_is_refused_in_one_line(tiny_settings, tiny_model_dir, quick_config, capsys, tmp_path):
    home = str(tiny_settings.home)
    tiny_settings.home.mkdir(parents=True, exist_ok=True)
    (tiny_settings.home / "config.toml").write_text(f'chat_model = "{tiny_model_dir}"\n')
    cases = [
        (["train"], "no dataset"),
        (["train", "--dataset", "ds-missing"], "dataset 'ds-missing' does not exist"),
        (["train", "--method", "qlora"], "qlora needs a CUDA GPU"),
        (["train", "--method", "dpo", "--config", str(quick_config(packing=True))], "packing=true conflicts with method 'dpo'"),
        (["promote", "sft-nope"], "no version 'sft-nope'"),
        (["rollback"], "nothing to roll back to"),
    ]
    for args, message in cases:
        assert main(["--home", home, *args]) == 1, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tiny_settings.home / "registry" / "versions").exists() or not list(
        (tiny_settings.home / "registry" / "versions").iterdir())
