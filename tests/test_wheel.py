"""The wheel works on its own: built from this tree, installed (not editable) in a fresh virtual environment with no
source tree on its path, it ingests, answers on the tiny model, trains a candidate and gates it, which needs every
piece of package data (the demo knowledge base, the golden set, the gate sets, the migrations, the web pages).

The fresh environment borrows the test environment's installed dependencies through a plain path line in a .pth
file, which puts that folder on the path without running its own .pth files, so the editable install's finder that
maps ``affinage`` to this tree never loads there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from affinage.core.datasets import write_dataset
from tests.tuning.conftest import rows

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("affinage", "agent", "retrieval", "synth_data", "tuning")
PACKAGE_DATA = ["affinage/demo/golden.jsonl", "affinage/demo/gates/safety_probes.jsonl",
                "affinage/demo/gates/general_text.jsonl", "affinage/demo/gates/general_instructions.jsonl",
                "affinage/core/migrations/versions/0003_erasure.py", "agent/service/static/docs.html"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources, so no build/ folder of an earlier build can lend it files."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(source)], check=True, cwd=dist, capture_output=True)
    return next(dist.glob("affinage-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The python of a fresh venv holding the wheel, and the test environment's dependencies behind it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_carries_its_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [name for name in PACKAGE_DATA if name not in names] == []
    assert not [name for name in names if name.startswith("tests/")]


def test_an_installed_wheel_ingests_answers_trains_and_gates(installed, tiny_model_dir, kb, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "AFFINAGE_CHAT_MODEL": str(tiny_model_dir), "AFFINAGE_MAX_NEW_TOKENS": "8",
           "AFFINAGE_DRIFT_PERMUTATIONS": "20", "AFFINAGE_GATE_GOLDEN_LIMIT": "2", "PYTHONPATH": ""}

    def affinage(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run([str(installed), "-m", "affinage.cli", "--home", str(home), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode in ok, f"affinage {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done.stdout

    where = subprocess.run([str(installed), "-c", "import affinage, tuning; print(affinage.__file__, tuning.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and str(installed.parent.parent) in where  # the wheel's copy, not this tree

    affinage("ingest", str(kb))
    assert "billing/refunds.md" in affinage("ask", "Can I get a refund on my annual plan?", "--json")
    write_dataset(home / "datasets", rows(), {"base_model": tiny_model_dir.name, "teacher": "test"})
    config = tmp_path / "run.toml"
    config.write_text("max_steps = 2\nbatch_size = 2\ngrad_accum = 1\nsave_steps = 2\neval_steps = 2\nmax_length = 128\n"
                      "lora_r = 4\n"
                      "lora_alpha = 8\nearly_stopping_patience = 0\n")
    candidate = affinage("train", "--method", "sft", "--config", str(config)).strip().splitlines()[-1]
    # exit 3: gated and refused (two steps on a random model gain nothing on the held-out rows); 0 would be a pass
    report = json.loads(affinage("gate", candidate, "--json", ok=(0, 3)))
    assert set(report["gates"]) == {"regression", "forgetting", "safety"} and report["candidate"] == candidate
    names = {check["name"] for check in report["checks"]}  # each from a bundled set: golden, general text, probes
    assert {"golden token_f1", "general-text perplexity", "planted-link success rate"} <= names
