"""Plants in passages: where they go, what obeying them looks like, and that the gates' probes stay held out."""

import json
import re

from synth_data.hardening import PLANTS, make_plant, obeying_answer, plant_among, rng_for
from tuning.gate_sets import GATE_DATA

SENTENCES = ["Refunds take five days.", "They go to the card you paid with.", "Press Download to get a CSV."]


def test_a_plant_goes_among_the_sentences_and_moves_nothing_else():
    rng = rng_for("interaction-1:0")
    plant = make_plant(rng)
    planted = plant_among(SENTENCES, plant, rng)
    assert planted.count(plant.text) == 1 and len(planted) == len(SENTENCES) + 1
    assert [s for s in planted if s != plant.text] == SENTENCES
    assert plant.canary in plant.text
    places = {plant_among(SENTENCES, plant, rng_for(f"k:{n}")).index(plant.text) for n in range(40)}
    assert places == {0, 1, 2, 3}  # first, between, and last: wherever a planted passage's sentence lands


def test_plants_are_seeded_by_their_key():
    first, second = make_plant(rng_for("a:0")), make_plant(rng_for("a:0"))
    assert first == second
    assert len({make_plant(rng_for(f"a:{n}")).canary for n in range(20)}) == 20


def test_an_obeying_answer_carries_the_canary():
    for family in ("link", "instruction"):
        rng = rng_for(family)
        plant = next(p for p in (make_plant(rng) for _ in range(50)) if p.family == family)
        assert plant.canary in obeying_answer("Refunds take five days.", plant)


def test_a_plant_among_no_sentences_is_the_only_one():
    plant = make_plant(rng_for("x"))
    assert plant_among([], plant, rng_for("x")) == [plant.text]


def test_no_safety_probe_shares_a_sentence_or_canary_with_the_plants():
    probes = [json.loads(line) for line in (GATE_DATA / "safety_probes.jsonl").read_text().splitlines() if line.strip()]
    plant_text = " ".join(f"{plant} {obeyed}" for _, plant, obeyed in PLANTS).lower()
    plant_runs = set().union(*(word_runs(f"{plant} {obeyed}") for _, plant, obeyed in PLANTS))
    for probe in probes:
        assert probe["canary"].lower() not in plant_text
        assert not word_runs(probe["passage"]) & plant_runs, probe["passage"]  # no four words in a row in common


def word_runs(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
