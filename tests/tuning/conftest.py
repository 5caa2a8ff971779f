"""A small dataset in each training format, built for the tiny test model, in a fresh workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from affinage.core.datasets import write_dataset

SYSTEM = {"role": "system", "content": "You are a support assistant."}
FACTS = [
    ("How long do refunds take?", "Refunds reach your card within 5 business days."),
    ("Can I export my data?", "Yes: open Settings > Export and press Download."),
    ("Where do I change my password?", "Open Account > Security and choose Change password."),
    ("Do you support SSO?", "Yes, SAML single sign-on is on the Business plan."),
    ("How do I cancel?", "Open Billing and press Cancel plan; access lasts until the period ends."),
    ("What is the API rate limit?", "The API allows 600 requests per minute per key."),
]


def user(question: str) -> dict:
    return {"role": "user", "content": question}


def rows() -> dict[str, list[dict]]:
    sft = [{"messages": [SYSTEM, user(q), {"role": "assistant", "content": a}]} for q, a in FACTS]
    preference = [{"prompt": [SYSTEM, user(q)], "chosen": [{"role": "assistant", "content": a}],
                   "rejected": [{"role": "assistant", "content": "I don't know."}]} for q, a in FACTS]
    kto = [{"prompt": [SYSTEM, user(q)], "completion": [{"role": "assistant", "content": a if i % 2 else "No idea."}],
            "label": bool(i % 2)} for i, (q, a) in enumerate(FACTS)]
    heldout = [{"question": "Is an annual subscription refundable, and for how long?",
                "answer": "Annual plans are refundable within 30 days of purchase.",
                "source": "billing/refunds.md#annual-plan-refunds"},
               {"question": "Until when does the link to reset a password work?",
                "answer": "The reset link expires after 2 hours.", "source": "account/passwords.md#reset-your-password"}]
    return {"sft": sft, "preference": preference, "kto": kto, "heldout": heldout}


@pytest.fixture
def dataset(tiny_settings, tiny_model_dir) -> dict:
    """The manifest of a dataset in ``tiny_settings``'s workspace, built for the tiny model."""
    return write_dataset(tiny_settings.datasets_dir, rows(), {"base_model": tiny_model_dir.name, "teacher": "test"})


@pytest.fixture
def quick_config(tmp_path):
    """A few steps, a checkpoint every two, no early stopping: the shape of a run, in seconds."""
    def write(**overrides) -> Path:
        values = {"max_steps": 4, "batch_size": 2, "grad_accum": 1, "save_steps": 2, "eval_steps": 2, "max_length": 128,
                  "lora_r": 4, "lora_alpha": 8, "early_stopping_patience": 0, "learning_rate": 1e-2, **overrides}
        path = tmp_path / "run.toml"
        path.write_text("".join(f"{k} = {v!r}\n".replace("True", "true").replace("False", "false")
                                for k, v in values.items()))
        return path
    return write
