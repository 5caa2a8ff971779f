"""The held-out material a candidate and the active version are both measured on: the golden set (the
operator's, else the workspace's own once it is large enough, else the bundled demo set), held-out paraphrases of
the failures the candidate was trained on (re-checked against its training questions), and the bundled forgetting
and safety sets."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from affinage.core.decontamination import decontaminate
from affinage.core.jsonl import numbered_lines
from affinage.core.settings import Settings

# The bundled gate sets ship as package data of ``affinage`` (pyproject's package-data), found the same way from a
# source tree or an installed wheel.
GATE_DATA = Path(str(resources.files("affinage") / "demo" / "gates"))
BUNDLED_GOLDEN = GATE_DATA.parent / "golden.jsonl"


@dataclass
class Sets:
    """The held-out material both versions are measured on."""

    golden: list[dict]
    target: list[dict]  # held-out paraphrases of the failures the candidate was trained on
    target_contaminated: int  # held-out rows dropped because a trained question reads like them
    general_text: list[str]
    general_instructions: list[dict]
    probes: list[dict]
    golden_origin: str = "bundled demo set"  # which golden set, for the report: see ``golden_set``


def bundled(name: str) -> list[dict]:
    """A bundled gate set: ``general_text``, ``general_instructions`` or ``safety_probes``."""
    return [row for _, row in numbered_lines(GATE_DATA / f"{name}.jsonl")]


def trained_questions(folder: Path) -> list[str]:
    """The questions a dataset's SFT rows train on (the user turn ends with the serving template's question)."""
    path = folder / "sft.jsonl"
    if not path.is_file():
        return []
    return [row["messages"][-2]["content"].rsplit("Question: ", 1)[-1] for _, row in numbered_lines(path)]


def golden_set(settings: Settings) -> tuple[list[dict], str]:
    """The golden rows and where they come from: the operator's ``golden_set``; else the workspace's own
    (``synth_data.golden``) once it holds ``golden_min_rows``; else the bundled demo set, saying why."""
    if settings.golden_set is not None:
        bundled_set = settings.golden_set.resolve() == BUNDLED_GOLDEN.resolve()  # `affinage demo` names it
        return ([row for _, row in numbered_lines(settings.golden_set)],
                "bundled demo set" if bundled_set else f"operator: {settings.golden_set}")
    path = settings.workspace_golden_path
    own = [row for _, row in numbered_lines(path)] if path.is_file() else []
    if len(own) >= settings.golden_min_rows:
        up = sum(row.get("origin") == "thumbs-up" for row in own)
        return own, f"workspace: {up} thumbs-up + {len(own) - up} from the knowledge base"
    why = f" (the workspace's own has {len(own)} rows, fewer than golden_min_rows = {settings.golden_min_rows})"
    return [row for _, row in numbered_lines(settings.golden_path)], "bundled demo set" + why


def gate_sets(settings: Settings, candidate: dict) -> Sets:
    """The golden set (first ``gate_golden_limit`` lines), the candidate's held-out set re-checked against its
    training questions, and the bundled forgetting and safety material."""
    golden, origin = golden_set(settings)
    golden = golden[: settings.gate_golden_limit] if settings.gate_golden_limit else golden
    target, trained = [], []
    for entry in candidate.get("datasets", []):
        folder = settings.datasets_dir / entry["id"]
        if (folder / "heldout.jsonl").is_file():
            target += [row for _, row in numbered_lines(folder / "heldout.jsonl")]
        trained += trained_questions(folder)
    clean, dropped, _ = decontaminate(target, lambda row: row["question"], trained)
    return Sets(golden, clean, dropped, [row["text"] for row in bundled("general_text")],
                bundled("general_instructions"), bundled("safety_probes"), origin)
