"""``affinage train``: check everything, run a recipe, register the result as a candidate with its manifest."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from affinage.core.memory import bound_heap
from affinage.core.model_files import EMBEDDED_NAME, resolve_model_path
from affinage.core.settings import EMBEDDED_CHAT_MODEL, Settings
from tuning.config import RunConfig, load_config
from tuning.data import load_training_data
from tuning.recipes import RECIPES, Job, hardware_problem
from tuning.registry import Registry, Version
from tuning.version_files import sha256_file

CONTINUES = ("sft", "dpo", "kto")  # methods that can continue the active LoRA adapter (``start_from``)

ROOT = Path(__file__).resolve().parent.parent


def base_model(settings: Settings) -> tuple[str, Path]:
    """The name datasets record for the base model, and the local folder of its weights."""
    if settings.openai_base_url:
        raise ValueError("training needs the model's weights locally, but chat_model is served by openai_base_url; "
                         "point chat_model at a local folder or Hugging Face id to train")
    location = resolve_model_path(settings)
    if isinstance(location, str):
        from huggingface_hub import snapshot_download

        location = Path(snapshot_download(location, local_files_only=True))
    name = EMBEDDED_NAME if settings.chat_model == EMBEDDED_CHAT_MODEL else Path(str(location)).name
    return name, Path(location)


def weights_sha256(folder: Path) -> str:
    """One digest over the model's weight files, so a manifest pins the exact base it was trained on."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return result.stdout.strip() or None


def prepare(settings: Settings, config: RunConfig, dataset_id: str | None, registry: Registry,
            progress: bool = True) -> tuple[Job, dict]:
    """Every check that can refuse the run, before any weights load; returns the job and its lineage."""
    problem = hardware_problem(config)
    if problem:
        raise ValueError(problem)
    name, base_path = base_model(settings)
    data = load_training_data(settings.datasets_dir, dataset_id, config.method, name, config.val_fraction, config.seed)
    start_version, start_adapter = None, None
    start = registry.active_id() if config.start_from == "active" else config.start_from
    if config.method in CONTINUES and start not in (None, "base"):
        which = "the active version" if config.start_from == "active" else "version"
        active = registry.get(start)
        if active.manifest.get("kind") != "lora":
            raise ValueError(f"{config.method} continues a LoRA adapter, but {which} {active.id} holds full weights: "
                             "set start_from = 'base' in the config")
        if active.trained_on_erased:
            raise ValueError(f"{config.method} would continue {which} {active.id}, which was trained on erased data "
                             "and would carry it into the candidate: set start_from = 'base' in the config")
        start_version, start_adapter = active.id, registry.verify(active.id)
    lineage = {
        "base_model": {"name": name, "sha256": weights_sha256(base_path)},
        "start_from": start_version or "base",
        "datasets": [{"id": data.manifest["id"], "content_hash": data.manifest["content_hash"]}],
        "config": config.to_json(),
    }
    run_key = hashlib.sha256(json.dumps(lineage, sort_keys=True).encode()).hexdigest()[:12]
    job = Job(config, data, base_path, start_adapter, settings.home / "runs" / f"{config.method}-{run_key}", progress)
    return job, lineage


def train(settings: Settings, method: str, dataset_id: str | None = None, config_path: Path | None = None,
          progress: bool = True) -> Version | None:
    """Train one candidate; a run killed part-way resumes from its newest checkpoint when started again.

    Under ``accelerate launch`` every process trains its share of each batch; once all of them have finished, the
    main process alone registers the candidate (the others return None). A process that fails ends the launch
    before anything is registered.
    """
    config = load_config(config_path, method)
    registry = Registry.open(settings)
    job, lineage = prepare(settings, config, dataset_id, registry, progress)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    bound_heap()  # activations in their own mappings: a fragmented heap would hold ~3x what a step needs
    trainer = RECIPES[method](job)
    peak = finish_processes(trainer.accelerator)  # every process has finished training past this
    if not trainer.accelerator.is_main_process:
        return None
    created = datetime.now(timezone.utc)
    manifest = {
        "id": f"{method}-{created:%Y%m%d-%H%M%S}-{job.run_dir.name[-6:]}",
        "method": method,
        "kind": "lora" if hasattr(trainer.model, "peft_config") else "full",
        "created_at": created.isoformat(),
        **lineage,
        "git_commit": git_commit(),
        "resumed_from": job.resumed_from,
        "hardware": {**hardware(), "processes": trainer.accelerator.num_processes},
        "rows": {"train": len(job.data.train), "validation": len(job.data.validation)},
        "curves": curves(trainer.state.log_history),
        "metrics": final_metrics(trainer.state, peak, job.tokens_before),
    }
    staged = registry.staging()
    if manifest["kind"] == "lora":
        trainer.model.save_pretrained(staged, selected_adapters=["default"], safe_serialization=True)
    else:
        trainer.model.save_pretrained(staged, safe_serialization=True)
        trainer.processing_class.save_pretrained(staged)
    version = registry.add(staged, manifest)
    shutil.rmtree(job.run_dir, ignore_errors=True)  # checkpoints are only for resuming this run
    return version


def curves(log_history: list[dict]) -> dict:
    return {"train": [[h["step"], round(h["loss"], 5)] for h in log_history if "loss" in h],
            "validation": [[h["step"], round(h["eval_loss"], 5)] for h in log_history if "eval_loss" in h]}


def final_metrics(state, peak_mb: float, tokens_before: int = 0) -> dict:
    """The run's summary; Trainer sums ``num_input_tokens_seen`` over every process, so tokens/s is the launch's.

    After a resume, ``train_runtime`` is this session's alone, so its speed counts only the tokens trained since the
    checkpoint (``tokens_before`` had been seen by then)."""
    summary = next((h for h in reversed(state.log_history) if "train_runtime" in h), {})
    runtime = summary.get("train_runtime") or 0.0
    trained_now = int(state.num_input_tokens_seen or 0) - tokens_before
    return {
        "train_loss": summary.get("train_loss"),
        "best_validation_loss": state.best_metric,
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 3),
        "stopped_early": state.global_step < state.max_steps,
        "tokens": int(state.num_input_tokens_seen or 0),
        "runtime_s": round(runtime, 2),
        "tokens_per_s": round(trained_now / runtime, 1) if runtime and trained_now > 0 else None,
        "peak_memory_mb": peak_mb,
    }


def finish_processes(accelerator) -> float:
    """The largest peak memory of any process (GPU memory allocated by torch, or the resident set size on the CPU),
    through the last collective of the run; then every process ends the process group, as accelerate asks.

    Two teardown failures of a two-process gloo launch shaped this. A rank that exited with gloo's threads still
    running aborted ("terminate called without an active exception"): hence ``end_training``. And a rank hung for
    good: its main thread, holding the GIL, freed the process group (in the DDP reducer's destructor) and waited for
    a gloo worker that was freeing the last collective's tensor and needed the GIL to do so. So that tensor stays
    referenced here until the barrier (which waits with the GIL released) has let the worker finish with it.
    """
    import torch

    if torch.cuda.is_available():
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**20], device=accelerator.device)
    else:
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return round(peak.item(), 1)


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count()}
    return {"device": "cpu", "threads": torch.get_num_threads()}
