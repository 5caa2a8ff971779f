#!/usr/bin/env python
"""LoRA SFT on GPUs: tokens/s and peak GPU memory of ``affinage train`` on a 0.5B-class model in bf16.

    .venv/bin/python bench/train_gpu.py [--gpus N] [--steps 40] [--batch-size 8] [--max-length 1024]
        [--model DIR] [--no-write]

Needs CUDA: without a GPU it exits with status 2 and writes nothing. The model is ``--model`` (a local folder), else
Qwen/Qwen2.5-0.5B-Instruct if it is already in the Hugging Face cache (nothing is downloaded), else a Qwen2-0.5B-shaped
Qwen2 model (24 layers, hidden 896, vocab 151,936; 494M parameters) built here with random weights and the default
model's tokenizer: throughput and memory depend on the shapes, not on the weight values, and the section says which
model ran. The job runs through the documented command, ``python -m affinage.cli train`` on one GPU and
``accelerate launch --multi_gpu --num_processes N -m affinage.cli train`` on N, in a fresh workspace: LoRA r=16 /
alpha=32 on all linear layers, bf16, padding-free packing, the demo golden conversations with the serving prompt
(cycled over the steps), no validation. Tokens/s is the candidate manifest's (real tokens over the trainer's
``train_runtime``, every process counted); peak memory is ``torch.cuda.max_memory_allocated`` of the busiest GPU.
Writes the ``bench:train_gpu`` section of ../BENCHMARKS.md.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, markers, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHED_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
LORA = {"r": 16, "alpha": 32}
START, END = markers("train_gpu")
# Qwen2-0.5B's published shape
QWEN2_05B = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
             "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}


def log(message: str) -> None:
    print(f"[train_gpu] {message}", file=sys.stderr, flush=True)


def gpu_problem(gpus: int) -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    import torch

    if not torch.cuda.is_available():
        return ("train_gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); this benchmark measures "
                "GPU training only and wrote nothing. CPU training throughput is bench/train_throughput.py")
    if gpus > torch.cuda.device_count():
        return f"train_gpu: --gpus {gpus} but this machine has {torch.cuda.device_count()} CUDA GPU(s); wrote nothing"
    if not torch.cuda.is_bf16_supported():
        return f"train_gpu: {torch.cuda.get_device_name(0)} does not support bfloat16; wrote nothing"
    return None


def cached_model() -> Path | None:
    """The real 0.5B model if the Hugging Face cache already holds it; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(CACHED_MODEL, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, in whatever way the hub client says so
        return None


def random_model(target: Path) -> Path:
    """A Qwen2-0.5B-shaped model with random bf16 weights and the default model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from affinage.core.settings import load_settings
    from affinage.core.model_files import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(load_settings(target.parent / "default-home")))
    torch.manual_seed(0)
    config = Qwen2Config(**QWEN2_05B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def model_folder(args, root: Path) -> tuple[Path, str]:
    """The folder to train and how the section describes it."""
    if args.model:
        path = Path(args.model)
        if not (path / "config.json").is_file():
            raise SystemExit(f"train_gpu: --model {path} is not a model folder (no config.json)")
        return path, f"`{path.name}` (real weights, from --model)"
    cached = cached_model()
    if cached:
        return cached, f"{CACHED_MODEL} (real weights, from the Hugging Face cache)"
    log(f"{CACHED_MODEL} is not in the Hugging Face cache: building a Qwen2-0.5B-shaped model with random weights")
    return random_model(root / "qwen2-0.5b-shape-random"), (
        "a Qwen2-0.5B-shaped Qwen2 model (24 layers, hidden 896, 14 heads / 2 KV heads, vocab 151,936) with random "
        "weights and SmolLM2's tokenizer, built locally because no 0.5B model could be loaded offline; throughput "
        "and memory depend on the shapes, not on the weight values")


def workspace(home: Path, model: Path, args) -> Path:
    """A fresh affinage home on ``model`` with an SFT dataset and the run config; returns the config file."""
    from train_throughput import conversations

    from affinage.core.settings import load_settings
    from affinage.core.datasets import write_dataset

    home.mkdir(parents=True)
    (home / "config.toml").write_text(f"chat_model = {json.dumps(str(model))}\n")
    settings = load_settings(home)
    write_dataset(settings.datasets_dir, {"sft": [{"messages": m} for m in conversations()]},
                  {"base_model": model.name, "teacher": "bench"})
    config = home / "run.toml"
    config.write_text("\n".join([
        f"max_steps = {args.steps}", f"batch_size = {args.batch_size}", "grad_accum = 1",
        f"max_length = {args.max_length}",
        f"lora_r = {LORA['r']}", f"lora_alpha = {LORA['alpha']}", "bf16 = true", "packing = true",
        "val_fraction = 0.0", "early_stopping_patience = 0", f"save_steps = {args.steps}",
        f"eval_steps = {args.steps}"]) + "\n")
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_command(home: Path, config: Path, gpus: int) -> list[str]:
    """The command docs/administrators.md documents, for one GPU or for ``gpus`` of them."""
    cli = ["-m", "affinage.cli", "--home", str(home), "train", "--method", "sft", "--config", str(config)]
    if gpus == 1:
        return [sys.executable, *cli]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", str(gpus),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *cli]


def run(home: Path, config: Path, gpus: int) -> dict:
    """Train; the candidate's manifest from the registry folder."""
    command = train_command(home, config, gpus)
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"train_gpu: training failed (status {result.returncode}); its output is above. "
                         f"Command: {' '.join(command)}")
    version = result.stdout.split()[-1]
    return json.loads((home / "registry" / "versions" / version / "manifest.json").read_text())


def section(manifest: dict, described: str, args, wall_s: float) -> str:
    import torch
    import transformers

    m, gpus = manifest["metrics"], manifest["hardware"]["processes"]
    row = (f"| {gpus} | {m['tokens']:,} | {m['runtime_s']:.1f} | {m['tokens_per_s']:.0f} | "
           f"{m['tokens_per_s'] / gpus:.0f} | {m['peak_memory_mb']:.0f} |")
    argv = [a for a in sys.argv[1:] if a != "--no-write"]
    return f"""{START}
## LoRA SFT on GPUs: tokens/s and peak memory (0.5B-class model, bf16)

Measured {dt.date.today().isoformat()} on {gpus} x {torch.cuda.get_device_name(0)}
(torch {torch.__version__}, transformers {transformers.__version__}); whole run {wall_s / 60:.1f} min.
Command: `{command_line(__file__, argv)}`

Model: {described}. Job: `affinage train --method sft` ({'one process' if gpus == 1 else
f'`accelerate launch --multi_gpu --num_processes {gpus}`'}), LoRA r={LORA['r']} alpha={LORA['alpha']} on all
linear layers, bf16, padding-free packing to {args.max_length} tokens, batch size {args.batch_size} per GPU,
{m['steps']} optimiser steps over the demo golden conversations (serving prompt with 1-3 passages, cycled). Tokens
are real (non-padding) tokens trained on, every GPU counted; time is the trainer's `train_runtime` (model loading
and tokenisation excluded; the first, slower steps included); peak memory is `torch.cuda.max_memory_allocated` on
the busiest GPU.

| GPUs | tokens | train s | tokens/s | tokens/s per GPU | peak GPU memory MiB |
|---:|---:|---:|---:|---:|---:|
{row}
{END}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=1, help="GPUs, one process each (default 1)")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps (default 40)")
    parser.add_argument("--batch-size", type=int, default=8, help="packed rows per GPU per step (default 8)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per packed row (default 1024)")
    parser.add_argument("--model", help="a local model folder to train instead of the 0.5B default")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if min(args.gpus, args.steps, args.batch_size, args.max_length) < 1:
        parser.error("--gpus, --steps, --batch-size and --max-length must be at least 1")
    problem = gpu_problem(args.gpus)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="affinage-train-gpu-") as root:
        model, described = model_folder(args, Path(root))
        config = workspace(Path(root) / "home", model, args)
        log(f"training {args.steps} steps on {args.gpus} GPU(s) ...")
        manifest = run(Path(root) / "home", config, args.gpus)
    text = section(manifest, described, args, time.perf_counter() - started)
    return publish(text, "train_gpu", write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
