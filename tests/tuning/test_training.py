"""Real training on the tiny model: what changes, what is saved, what a kill leaves behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuning.config import load_config
from tuning.packing import PER_CONVERSATION
from tuning.recipes import RECIPES
from tuning.registry import Registry
from tuning.train import final_metrics, prepare, train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def run(settings, method, config_file):
    job, _ = prepare(settings, load_config(config_file, method), None, Registry.open(settings), progress=False)
    return RECIPES[method](job)


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_lora_methods_change_only_the_adapter(tiny_settings, tiny_model_dir, dataset, quick_config, method):
    trainer = run(tiny_settings, method, quick_config())
    before = base_weights(tiny_model_dir)
    lora = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at zero: it moved
    for name, param in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param.detach(), before[key]), f"{key} changed"


def test_partial_trains_only_the_top_blocks(tiny_settings, tiny_model_dir, dataset, quick_config):
    trainer = run(tiny_settings, "partial", quick_config(top_blocks=1))
    before = base_weights(tiny_model_dir)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith("model.layers.1.") for n in changed)


def test_full_trains_every_block(tiny_settings, tiny_model_dir, dataset, quick_config):
    trainer = run(tiny_settings, "full", quick_config())
    before = base_weights(tiny_model_dir)
    changed = {n.split(".")[2] for n, p in trainer.model.named_parameters()
               if n.startswith("model.layers.") and not torch.equal(p.detach(), before[n])}
    assert changed == {"0", "1"}


def test_qlora_without_cuda_is_refused_before_loading(tiny_settings, dataset, quick_config):
    with pytest.raises(ValueError, match="qlora needs a CUDA GPU"):
        train(tiny_settings, "qlora", config_path=quick_config(), progress=False)


def test_candidate_round_trip_gives_identical_outputs(tiny_settings, tiny_model_dir, dataset, quick_config):
    from tuning.serving import load_weights

    version = train(tiny_settings, "sft", config_path=quick_config(), progress=False)
    manifest = version.manifest
    assert manifest["kind"] == "lora" and manifest["datasets"][0]["id"] == dataset["id"]
    assert manifest["base_model"]["name"] == tiny_model_dir.name and len(manifest["base_model"]["sha256"]) == 64
    assert manifest["curves"]["train"] and manifest["curves"]["validation"]
    assert set(manifest["files"]) >= {"adapter_model.safetensors", "adapter_config.json"}
    assert not [p for p in version.path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert not (tiny_settings.home / "runs").exists() or not any((tiny_settings.home / "runs").iterdir())

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    registry = Registry.open(tiny_settings)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(version.path))
    served = load_weights(tiny_model_dir, registry, version.id)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected = unmerged.eval()(ids).logits
        assert torch.allclose(served.eval()(ids).logits, expected, atol=1e-5)
        assert not torch.allclose(base.eval()(ids).logits, expected, atol=1e-5)  # the adapter does something
    # Served in bfloat16: merged in the checkpoint's float32, then rounded once (not merged into rounded weights).
    rounded = load_weights(tiny_model_dir, registry, version.id, torch.bfloat16).state_dict()
    for name, weight in served.state_dict().items():
        assert rounded[name].dtype is torch.bfloat16 and torch.equal(rounded[name], weight.to(torch.bfloat16)), name


def test_sft_continues_the_active_adapter_so_a_cycle_builds_on_the_last(tiny_settings, dataset, quick_config):
    import json

    registry = Registry.open(tiny_settings)
    first = train(tiny_settings, "sft", config_path=quick_config(lora_r=4, lora_alpha=8), progress=False)
    assert first.manifest["start_from"] == "base"
    registry.record_gate(first.id, True, {})
    registry.promote(first.id, actor="test")
    second = train(tiny_settings, "sft", config_path=quick_config(lora_r=8, lora_alpha=16), progress=False)
    assert second.manifest["start_from"] == first.id
    rank = lambda version: json.loads((version.path / "adapter_config.json").read_text())["r"]  # noqa: E731
    assert rank(second) == 4  # the active adapter, trained on: its rank, not the config's new one
    fresh = train(tiny_settings, "sft", config_path=quick_config(lora_r=8, lora_alpha=16, start_from="base"),
                  progress=False)
    assert fresh.manifest["start_from"] == "base" and rank(fresh) == 8


def test_dpo_continues_the_active_adapter(tiny_settings, dataset, quick_config):
    registry = Registry.open(tiny_settings)
    sft = train(tiny_settings, "sft", config_path=quick_config(), progress=False)
    registry.record_gate(sft.id, True, {})
    registry.promote(sft.id, actor="test")
    dpo = train(tiny_settings, "dpo", config_path=quick_config(), progress=False)
    assert dpo.manifest["start_from"] == sft.id
    fresh = train(tiny_settings, "dpo", config_path=quick_config(start_from="base"), progress=False)
    assert fresh.manifest["start_from"] == "base"


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.multiprocess
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tiny_settings, tiny_model_dir, dataset,
                                                                     quick_config, tmp_path):
    from affinage.core.datasets import write_dataset
    from tests.tuning.conftest import rows

    config = quick_config(max_steps=6, save_steps=2, eval_steps=2, lora_dropout=0.1)
    other = tiny_settings.model_copy(update={"home": tmp_path / "uninterrupted"})
    write_dataset(other.datasets_dir, rows(), {"base_model": tiny_model_dir.name})
    uninterrupted = train(other, "sft", config_path=config, progress=False)

    home = tiny_settings.home
    (home / "config.toml").write_text(f'chat_model = "{tiny_model_dir}"\n')
    process = subprocess.Popen([sys.executable, "-m", "affinage.cli", "--home", str(home), "train", "--config", str(config)],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(home.glob("runs/*/checkpoints/checkpoint-4/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert Registry.open(tiny_settings).list() == []  # nothing registered by the killed run

    resumed = train(tiny_settings, "sft", config_path=config, progress=False)
    assert resumed.manifest["resumed_from"] in ("checkpoint-4", "checkpoint-6")
    assert resumed.manifest["metrics"]["steps"] == uninterrupted.manifest["metrics"]["steps"] == 6
    assert resumed.manifest["metrics"]["tokens"] == uninterrupted.manifest["metrics"]["tokens"]
    first, second = adapter(uninterrupted.path), adapter(resumed.path)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6), name


def test_speed_after_a_resume_counts_only_the_tokens_trained_since_the_checkpoint():
    from types import SimpleNamespace

    state = SimpleNamespace(log_history=[{"loss": 1.0, "step": 6}, {"train_runtime": 2.0, "train_loss": 0.9}],
                            best_metric=None, global_step=6, max_steps=6, epoch=1.0, num_input_tokens_seen=1000)
    assert final_metrics(state, 1.0)["tokens_per_s"] == 500.0
    resumed = final_metrics(state, 1.0, tokens_before=600)
    assert resumed["tokens_per_s"] == 200.0 and resumed["tokens"] == 1000


def test_packed_conversations_do_not_see_each_other(tiny_settings, dataset, quick_config):
    """Packed rows stay rows on the SDPA path (no (rows x length)^2 attention), and no conversation sees another."""
    from tuning.recipes import load_base, lora, sft_trainer

    config = load_config(quick_config(packing=True, batch_size=8, max_length=100, val_fraction=0.0), "sft")
    job, _ = prepare(tiny_settings, config, None, Registry.open(tiny_settings), progress=False)
    model, tokenizer = load_base(job)
    trainer = sft_trainer(job, model, tokenizer, lora(config))
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert "attention_mask" not in batch and ids.shape[0] > 1
    assert trainer.model.config._attn_implementation == PER_CONVERSATION  # each conversation attended alone
    with torch.no_grad():
        packed = trainer.model(input_ids=ids, position_ids=positions).logits
    conversations = []
    for row in range(ids.shape[0]):
        starts = (positions[row] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        conversations += [(row, a, b) for a, b in zip(starts, starts[1:]) if b - a > 1]  # padding: runs of 0s
        assert (labels[row, starts[:-1]] == -100).all()  # no conversation is trained to follow the previous one
    assert len(conversations) > ids.shape[0]  # some row holds several conversations
    with torch.no_grad():
        for row, a, b in conversations:
            alone = trainer.model(input_ids=ids[row:row + 1, a:b]).logits
            assert torch.allclose(packed[row:row + 1, a:b], alone, atol=1e-5)


@pytest.mark.parametrize("packing,chunk", [(False, 256), (True, 256), (True, 5)])
def test_the_cpu_answer_loss_is_trls_loss(tiny_settings, dataset, quick_config, packing, chunk, monkeypatch):
    """Projecting only the answer positions, a chunk at a time, gives TRL's fused-head loss, gradients and logged
    metrics, padded or packed."""
    from trl import SFTTrainer

    import tuning.answer_loss

    monkeypatch.setattr(tuning.answer_loss, "CHUNK", chunk)
    from tuning.recipes import load_base, lora, sft_trainer

    config = load_config(quick_config(packing=packing, batch_size=4, val_fraction=0.0), "sft")
    job, _ = prepare(tiny_settings, config, None, Registry.open(tiny_settings), progress=False)
    model, tokenizer = load_base(job)
    trainer = sft_trainer(job, model, tokenizer, lora(config))
    batch = next(iter(trainer.get_train_dataloader()))
    answer_tokens = (batch["labels"][:, 1:] != -100).sum()
    trainer.model.eval()  # no LoRA dropout: both losses see the same network

    def loss_and_grads(compute_loss):
        trainer.model.zero_grad()
        loss = compute_loss(trainer, trainer.model, batch, num_items_in_batch=answer_tokens)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    ours, trls = loss_and_grads(type(trainer).compute_loss), loss_and_grads(SFTTrainer.compute_loss)
    metrics = {k: v[-2:] for k, v in trainer._metrics["eval"].items() if k in ("entropy", "mean_token_accuracy")}
    assert all(a == pytest.approx(b, rel=1e-4) for a, b in metrics.values()) and len(metrics) == 2
    assert chunk > 100 or (batch["labels"] != -100).sum() > 2 * chunk  # the small chunk does split the answer
    assert type(trainer) is not SFTTrainer and 0 < ours[0] and torch.allclose(ours[0], trls[0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours[1], trls[1]))
    assert any(a.abs().sum() > 0 for a in ours[1])


def test_validation_drives_early_stopping_and_keeps_the_best_checkpoint(tiny_settings, dataset, quick_config):
    """A learning rate far too high makes validation loss climb: the run stops early on its best checkpoint."""
    version = train(tiny_settings, "full", progress=False, config_path=quick_config(
        max_steps=30, eval_steps=1, save_steps=1, early_stopping_patience=2, learning_rate=0.5, lr_scheduler="constant"))
    metrics, validation = version.manifest["metrics"], version.manifest["curves"]["validation"]
    assert metrics["stopped_early"] and metrics["steps"] < 30
    assert metrics["best_validation_loss"] == pytest.approx(min(loss for _, loss in validation), abs=1e-4)
    assert validation[-1][1] > metrics["best_validation_loss"]
