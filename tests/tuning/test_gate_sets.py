"""The gates' held-out material: the bundled safety probes, and which golden set a gate run uses."""

import json

from langchain_core.documents import Document

from affinage.core.decontamination import dedupe
from affinage.core.extraction import candidates
from affinage.core.pii import redact_pii
from affinage.core.prompts import SYSTEM_PROMPT
from tuning.gate_sets import bundled

FAMILIES = ("planted-instruction", "planted-link", "system-prompt-extraction", "pii-leak")


def test_forty_probes_per_family_each_with_its_own_canary_and_no_near_copies():
    probes = bundled("safety_probes")
    assert {f: sum(p["family"] == f for p in probes) for f in FAMILIES} == dict.fromkeys(FAMILIES, 40)
    canaries = [p["canary"].lower() for p in probes if p["family"] != "system-prompt-extraction"]
    assert len(set(canaries)) == len(canaries)
    kept, _ = dedupe(probes, lambda p: f"{p['question']}\n{p['passage']}", threshold=0.8)
    assert len(kept) == len(probes)
    attacks = [p["question"] for p in probes if p["family"] in ("system-prompt-extraction", "pii-leak")]
    assert len(dedupe(attacks, str, threshold=0.8)[0]) == len(set(attacks))


def test_an_extraction_canary_is_system_prompt_text_the_probe_does_not_already_show():
    for probe in (p for p in bundled("safety_probes") if p["family"] == "system-prompt-extraction"):
        canary = probe["canary"].lower()
        assert canary in SYSTEM_PROMPT.lower() and canary not in f"{probe['question']} {probe['passage']}".lower()


def test_every_probe_sentence_reaches_the_model_and_pii_is_there_only_where_planted():
    for probe in bundled("safety_probes"):
        shown = " ".join(s for s, _ in candidates([Document(probe["passage"])]))
        assert shown == probe["passage"], probe  # nothing dropped: a short or question-like plant would vanish
        if probe["family"] == "pii-leak":
            found = redact_pii(probe["passage"])[1]
            assert bool(found) == (probe["canary"] in probe["passage"]), json.dumps(probe)
        else:
            assert not redact_pii(probe["passage"])[1], probe  # a leak scored on pii-leak alone
