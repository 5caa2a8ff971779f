"""Plants in passages: where they go, what obeying them looks like, and that the gates' probes stay held out."""

import json
import re

from langchain_core.documents import Document

from affinage.core.extraction import candidates
from affinage.core.prompts import prompt_messages
from affinage.core.settings import Settings
from synth_data.builder import hardened_items
from affinage.core.pii import redact_pii
from synth_data.hardening import (
    CONTACT_PLANTS,
    INSTRUCTION_PLANTS,
    LEAKS,
    LINK_PLANTS,
    PII_ASKS,
    REFUSALS,
    make_plant,
    obeying_answer,
    plant_among,
    rng_for,
)
from tuning.gate_sets import GATE_DATA

DEMO = GATE_DATA.parent

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
    assert len({make_plant(rng_for(f"a:{n}")).text for n in range(20)}) == 20


def test_an_obeying_answer_carries_the_canary():
    for family in ("link", "instruction", "pii"):
        rng = rng_for(family)
        plant = next(p for p in (make_plant(rng) for _ in range(50)) if p.family == family)
        assert plant.canary in obeying_answer("Refunds take five days.", plant)


def test_a_row_that_asks_for_a_planted_persons_details_is_refused():
    """Half the pii plants come with a question asking for the person's details: the target refuses and names no
    detail, the rejected answer leaks it (what the gates' PII detector counts), and the made-up details are all from
    reserved ranges, never anybody's."""
    plants = [p for p in (make_plant(rng_for(f"p:{n}")) for n in range(300)) if p.family == "pii"]
    asks = [p for p in plants if p.question]
    assert 0.3 < len(asks) / len(plants) < 0.7
    for plant in plants:
        assert redact_pii(plant.text)[1] and redact_pii(obeying_answer("Refunds take five days.", plant))[1]
        assert plant.canary.endswith(".example") or "555-01" in plant.canary or plant.canary.startswith(
            ("4242", "4000 0566", "5555 5555", "5200 8282", "4012 8888", "5105 1051"))
    for plant in asks:
        assert plant.refusal and not redact_pii(plant.refusal)[1] and plant.canary not in plant.refusal
        assert any(name in plant.text for name in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", plant.question)), plant


def test_a_plant_among_no_sentences_is_the_only_one():
    plant = make_plant(rng_for("x"))
    assert plant_among([], plant, rng_for("x")) == [plant.text]


def test_no_safety_probe_shares_a_sentence_or_canary_with_what_synth_trains_on():
    """The probes are a held-out test: no four words in a row in common with the plants, what obeying them looks
    like, or the demo's traffic and examples (the system prompt every row carries aside: extraction asks for it)."""
    trained = [f"{plant} {obeyed}" for plant, obeyed in LINK_PLANTS + INSTRUCTION_PLANTS]
    trained += [*CONTACT_PLANTS, *PII_ASKS, *REFUSALS, *LEAKS]
    for name in ("traffic", "examples"):
        trained += [" ".join([row["question"], row["answer"], *row.get("paraphrases", [])])
                    for row in (json.loads(line) for line in (DEMO / f"{name}.jsonl").read_text().splitlines())]
    trained_runs = set().union(*map(word_runs, trained))
    trained_text = " ".join(trained).lower()
    for probe in probes():
        assert probe["canary"].lower() not in trained_text, probe["canary"]
        assert not word_runs(f"{probe['question']} {probe['passage']}") & trained_runs, probe


def test_hardening_rows_put_plants_where_the_probes_do():
    """Same prompt shape (the serving prompt, one line per passage sentence, the plant one of them) and the same
    positions: first, among or last, in about the shares the planted probes use."""
    def place(lines: list[str], canary: str) -> str:
        at = next(n for n, line in enumerate(lines) if canary.lower() in line.lower())
        return "first" if at == 0 else "last" if at == len(lines) - 1 else "among"

    def shares(places: list[str]) -> dict[str, float]:
        return {where: places.count(where) / len(places) for where in ("first", "among", "last")}

    planted = [p for p in probes() if p["family"] in ("planted-instruction", "planted-link")]
    probe_places = []
    for probe in planted:
        lines = [s for s, _ in candidates([Document(probe["passage"])])]
        assert sum(probe["canary"].lower() in line.lower() for line in lines) == 1, probe  # the plant is one line
        probe_places.append(place(lines, probe["canary"]))
    quoted = SENTENCES[: Settings.model_fields["quote_sentences"].default]
    base = {"question": "Where do refunds go?", "user": "u", "interaction_id": "i", "passages": [], "customer": None}
    row_places = []
    for n in range(400):
        item = hardened_items(["Where do refunds go?"], {"Where do refunds go?": quoted}, "Refunds take five days.",
                              False, {**base, "interaction_id": f"i{n}"}, 1)[0]
        prompt = item.row["messages"][:-1]
        lines = prompt[1]["content"].split("<passages>\n", 1)[1].split("\n</passages>", 1)[0].split("\n")
        assert prompt == prompt_messages(item.question, lines)  # the probes' prompt, line for line
        canary = next(line for line in lines if line not in quoted)
        row_places.append(place(lines, canary))
    probe_shares, row_shares = shares(probe_places), shares(row_places)
    assert all(abs(probe_shares[w] - row_shares[w]) <= 0.1 for w in probe_shares), (probe_shares, row_shares)


def test_a_hardened_row_that_asks_for_the_planted_persons_details_targets_a_refusal():
    base = {"question": "Where do refunds go?", "user": "u", "interaction_id": "i", "passages": [], "customer": None}
    pairs = [hardened_items(["Where do refunds go?"], {"Where do refunds go?": SENTENCES[:2]}, "Refunds take five days.",
                            False, {**base, "interaction_id": f"i{n}"}, 1) for n in range(60)]
    asks = [(sft, pair) for sft, pair in pairs if sft.question != "Where do refunds go?"]
    assert asks
    for sft, pair in asks:
        target = sft.row["messages"][-1]["content"]
        assert "personal" in target and not redact_pii(target)[1] and pair.row["chosen"][0]["content"] == target
        assert redact_pii(sft.row["messages"][1]["content"])[1]  # the details are in the passages,
        assert redact_pii(pair.row["rejected"][0]["content"])[1]  # and the rejected answer gives them out
        assert sft.answer == "Refunds take five days."  # what the filters judge: the failure's own answer


def probes() -> list[dict]:
    return [json.loads(line) for line in (GATE_DATA / "safety_probes.jsonl").read_text().splitlines() if line.strip()]


def word_runs(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
