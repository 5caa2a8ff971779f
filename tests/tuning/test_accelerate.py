"""``affinage train`` under the real ``accelerate launch``: two CPU processes in one gloo group train one candidate."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from affinage.core.datasets import write_dataset
from tests.tuning.conftest import rows
from tuning.registry import Registry
from tuning.train import train, weights_sha256

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(settings, model_dir: Path, module: str, *train_args: str) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 -m MODULE --home HOME train ...``, as docs/administrators.md has it."""
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "config.toml").write_text(f'chat_model = "{model_dir}"\n')
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
               "--num_processes", str(PROCESSES), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", module, "--home", str(settings.home), "train", *train_args]
    return subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_processes_train_what_one_process_trains(tiny_settings, tiny_model_dir, dataset, quick_config, tmp_path,
                                                     method):
    """Two processes taking one row each per step end where one process taking both rows ends: gradients are averaged
    over the processes (the CPU answer-only loss included), and one process registers one candidate."""
    one = tiny_settings.model_copy(update={"home": tmp_path / "one-process"})
    write_dataset(one.datasets_dir, rows(), {"base_model": tiny_model_dir.name})
    alone = train(one, method, config_path=quick_config(max_steps=2, batch_size=2, lora_dropout=0.0), progress=False)
    base_digest = weights_sha256(tiny_model_dir)

    config = quick_config(max_steps=2, batch_size=1, lora_dropout=0.0)
    result = launch(tiny_settings, tiny_model_dir, "affinage.cli", "--method", method, "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]

    versions = Registry.open(tiny_settings).list()
    assert [v.id for v in versions] == [result.stdout.split()[-1]]  # one version, registered by one process
    assert result.stdout.count("candidate ") == 1
    manifest = versions[0].manifest
    assert manifest["hardware"]["processes"] == PROCESSES and alone.manifest["hardware"]["processes"] == 1
    assert manifest["metrics"]["steps"] == 2
    assert manifest["metrics"]["tokens"] == alone.manifest["metrics"]["tokens"] > 0  # every process's tokens counted

    assert set(manifest["files"]) == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    adapter, expected = (load_file(str(v.path / "adapter_model.safetensors")) for v in (versions[0], alone))
    assert adapter.keys() == expected.keys() and all("lora_" in name for name in adapter)
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # B starts at zero: it trained
    for name in adapter:
        assert torch.allclose(adapter[name], expected[name], atol=1e-5), name
    assert weights_sha256(tiny_model_dir) == base_digest == manifest["base_model"]["sha256"]
    assert not any((tiny_settings.home / "runs").iterdir())  # checkpoints go once the candidate is registered


def test_a_failing_process_fails_the_launch_and_registers_nothing(tiny_settings, tiny_model_dir, dataset,
                                                                  quick_config):
    result = launch(tiny_settings, tiny_model_dir, "tests.tuning.failing_rank", "--config", str(quick_config()))
    assert result.returncode != 0
    assert "rank 1 fails on purpose at step 2" in result.stderr
    assert Registry.open(tiny_settings).list() == []
    versions = tiny_settings.registry_dir / "versions"
    assert not versions.exists() or not any(versions.iterdir())  # not even a staging folder
