"""One short recipe per method: set up the model and trainer, train (resuming any checkpoint), return the trainer.

TRL and PEFT do the work; a recipe only chooses. Saving into the registry is shared (``tuning.train``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from affinage.core.model_files import cpu_computes_bf16
from tuning.config import RunConfig
from tuning.data import TrainingData


@dataclass
class Job:
    """Everything a recipe needs, resolved and checked before any weights load."""

    config: RunConfig
    data: TrainingData
    base_path: Path  # local folder of the base model's weights
    start_adapter: Path | None  # sft/dpo/kto: the active LoRA adapter to continue from
    run_dir: Path  # checkpoints of this run (the same inputs give the same folder, so a restart resumes)
    progress: bool = True
    resumed_from: str | None = None  # the checkpoint a restarted run went on from
    tokens_before: int = 0  # tokens that checkpoint had already trained on (this session's speed excludes them)


def hardware_problem(config: RunConfig) -> str | None:
    """Why this machine cannot run ``config``, or None."""
    import torch

    if config.method == "qlora":
        if not torch.cuda.is_available():
            return "qlora needs a CUDA GPU (4-bit weights via bitsandbytes); this machine has none: use --method sft"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "qlora needs the bitsandbytes package: pip install bitsandbytes"
    if config.bf16 and not bf16_native():
        return ("bf16=true needs a GPU that supports bfloat16 or a CPU that computes it (AVX512-BF16 or AMX); this "
                "machine trains in float32")
    return None


def bf16_native() -> bool:
    """Whether the device that trains computes bfloat16 in hardware: a CUDA GPU that supports it, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_computes_bf16()


def use_bf16(config: RunConfig) -> bool:
    """The run config's ``bf16``, by default on where a GPU supports it. A CPU that computes bfloat16 (AVX512-BF16,
    AMX) trains in it only when asked: a demo step took 15 s there against 24 s in float32, but the same seed's
    candidate fell for 16 of 160 attack probes against float32's 8 (the base model: 4) and was refused."""
    import torch

    return torch.cuda.is_available() and bf16_native() if config.bf16 is None else config.bf16


# -- shared steps ----------------------------------------------------------------------------------------------------
def load_base(job: Job, quantized: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": torch.bfloat16 if use_bf16(job.config) else torch.float32}
    if quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # each process's 4-bit copy on its GPU
    model = AutoModelForCausalLM.from_pretrained(str(job.base_path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(job.base_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lora(config: RunConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM")


def arguments(args_class, job: Job, **method_specific):
    """The TrainingArguments every method shares: schedule, validation, early stopping, checkpoints, precision.

    Under ``accelerate launch`` (or torchrun) each process builds the same arguments. Without CUDA they ask for the
    CPU, so the processes join one gloo group instead of each training alone; every trainable weight takes part in
    every forward, so DDP need not search the graph for unused ones.
    """
    import torch

    c, validate = job.config, bool(job.data.validation)
    args = args_class(
        output_dir=str(job.run_dir / "checkpoints"),
        learning_rate=c.learning_rate,
        lr_scheduler_type=c.lr_scheduler,
        warmup_steps=c.warmup_ratio,  # below 1: a share of the steps
        weight_decay=c.weight_decay,
        num_train_epochs=c.epochs,
        max_steps=c.max_steps,
        per_device_train_batch_size=c.batch_size,
        per_device_eval_batch_size=c.batch_size,
        gradient_accumulation_steps=c.grad_accum,
        activation_checkpointing=(not torch.cuda.is_available() if c.activation_checkpointing is None
                                  else c.activation_checkpointing),
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=c.seed,
        data_seed=c.seed,
        bf16=use_bf16(c),
        eval_strategy="steps" if validate else "no",
        eval_steps=c.eval_steps,
        save_strategy="steps",
        save_steps=c.save_steps,
        save_total_limit=2,
        load_best_model_at_end=validate and c.early_stopping_patience > 0,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        include_num_input_tokens_seen="non_padding",
        report_to=[],
        disable_tqdm=not job.progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        **method_specific,
    )
    if not args.should_log:  # every rank tokenises the same rows; one set of progress bars is enough
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    return args


def callbacks(job: Job) -> list:
    from transformers import EarlyStoppingCallback

    if job.data.validation and job.config.early_stopping_patience:
        return [EarlyStoppingCallback(early_stopping_patience=job.config.early_stopping_patience)]
    return []


def datasets(job: Job, args):
    """The train and validation rows as Arrow files in the run folder, which every process then maps.

    TRL caches what it derives from them (tokenised rows; the reference log-probs dpo and kto compute on the main
    process and read back on the others) beside them, where every process of a multi-process launch finds them.
    """
    from datasets import Dataset, load_from_disk

    folder = job.run_dir / "data"
    splits = {"train": job.data.train, "validation": job.data.validation}
    with args.main_process_first(desc="writing the training rows"):
        if args.local_process_index == 0:
            for name, rows in splits.items():
                if rows:
                    Dataset.from_list(rows).save_to_disk(folder / name)
        return tuple(load_from_disk(folder / name) if rows else None for name, rows in splits.items())


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: ``trainer_state.json`` is written last, so a folder without it was cut off."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def sft_trainer(job: Job, model, tokenizer, peft_config=None):
    """SFTTrainer on prompt/completion rows (loss on the answer only), bfd-packed padding-free when packing is on."""
    from trl import SFTConfig

    # these two import torch and trl at their top: every importer of tuning.train (serving, the cycle) would pay
    from tuning.answer_loss import AnswerLossSFTTrainer
    from tuning.packing import attend_per_conversation, rows_collator

    args = arguments(SFTConfig, job, max_length=job.config.max_length, packing=job.config.packing,
                     packing_strategy="bfd", completion_only_loss=True)
    train, validation = datasets(job, args)
    trainer = AnswerLossSFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                                   processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks(job))
    collator = rows_collator(model, trainer.processing_class) if trainer.padding_free else None
    if collator is not None:  # TRL refuses a custom collator with packing at construction; swap it in after
        trainer.data_collator = collator
        attend_per_conversation(trainer.model)
    return trainer


def fit(trainer, job: Job):
    """Train, resuming from the newest complete checkpoint; library chatter goes to stderr, not stdout."""
    checkpoint = last_checkpoint(job.run_dir / "checkpoints")
    job.resumed_from = checkpoint.name if checkpoint else None
    if checkpoint:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        job.tokens_before = int(state.get("num_input_tokens_seen") or 0)
    with redirect_stdout(sys.stderr):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return trainer


def starting_policy(job: Job, model):
    """sft/dpo/kto continue the active adapter (dpo/kto: TRL keeps a frozen copy as the reference) or get a new
    LoRA; a continued adapter keeps its own rank and target modules."""
    if job.start_adapter is None:
        return model, lora(job.config)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(job.start_adapter), is_trainable=True), None


# -- recipes ---------------------------------------------------------------------------------------------------------
def sft(job: Job):
    """LoRA SFT from the active adapter or a new one; the loss covers the answer only; conversations packed in rows."""
    model, tokenizer = load_base(job)
    model, peft_config = starting_policy(job, model)
    return fit(sft_trainer(job, model, tokenizer, peft_config), job)


def qlora(job: Job):
    """A new LoRA over a 4-bit base (CUDA + bitsandbytes)."""
    model, tokenizer = load_base(job, quantized=True)
    return fit(sft_trainer(job, model, tokenizer, lora(job.config)), job)


def dpo(job: Job):
    """DPO on preference pairs, from the active adapter or the base model."""
    from trl import DPOConfig, DPOTrainer

    return _preference(job, DPOConfig, DPOTrainer)


def kto(job: Job):
    """KTO on unpaired thumbs-up / thumbs-down answers, from the active adapter or the base model."""
    from trl import KTOConfig, KTOTrainer

    return _preference(job, KTOConfig, KTOTrainer)


def _preference(job: Job, config_class, trainer_class):
    """DPO and KTO take the same set-up; only TRL's config and trainer classes differ."""
    from tuning.compact_head import use_compact_head  # imports trl at its top, like the trainers here

    use_compact_head()
    model, tokenizer = load_base(job)
    model, peft_config = starting_policy(job, model)
    args = arguments(config_class, job, beta=job.config.beta, max_length=job.config.max_length,
                     precompute_ref_log_probs=job.config.precompute_ref)
    train, validation = datasets(job, args)
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=validation,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks(job))
    return fit(trainer, job)


def partial(job: Job):
    """Only the top ``top_blocks`` transformer blocks train; everything else stays frozen."""
    model, tokenizer = load_base(job)
    blocks = transformer_blocks(model)
    if job.config.top_blocks > len(blocks):
        raise ValueError(f"top_blocks ({job.config.top_blocks}) exceeds the model's {len(blocks)} transformer blocks")
    model.requires_grad_(False)
    for block in blocks[-job.config.top_blocks:]:
        block.requires_grad_(True)
    return fit(sft_trainer(job, model, tokenizer), job)


def full(job: Job):
    """Every weight trains: for small models, and as the yardstick for LoRA."""
    model, tokenizer = load_base(job)
    return fit(sft_trainer(job, model, tokenizer), job)


def transformer_blocks(model) -> list:
    """The decoder's block list, wherever the architecture keeps it."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if node is not None:
            return list(node)
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__} for method partial")


RECIPES = {"sft": sft, "dpo": dpo, "kto": kto, "partial": partial, "full": full, "qlora": qlora}
