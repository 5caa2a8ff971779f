"""Seeded failures in, a filtered, immutable dataset out."""

import json
import random
import re

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.cli import main
from affinage.core.datasets import list_datasets, verify_dataset
from affinage.core.prompts import PROMPT_VERSION, QUOTE_LEAD, SYSTEM_PROMPT
from affinage.factory import build_agent
from agent.feedback import record_feedback
from retrieval.ingest import ingest
from synth_data.builder import synthesize
from synth_data.hardening import CONTACT_PLANTS, INSTRUCTION_PLANTS, LINK_PLANTS, REFUSALS

pytestmark = pytest.mark.slow

BAD = "We never give refunds, sorry."
GOOD = "Annual plans are refundable within 30 days of purchase: open Settings > Billing and press Request refund."


class Teacher(FakeListChatModel):
    """A scripted teacher at the edge of the test: paraphrase requests get three lines, answers get GOOD."""

    def _call(self, messages, *args, **kwargs):
        if "Rewrite this customer question" in messages[-1].content:
            return "1. Is a yearly plan refundable?\n2. Could I get my money back for an annual subscription?\n3. refund annual plan"
        return GOOD


@pytest.fixture
def seeded(tiny_settings, kb, embeddings):
    ingest(tiny_settings.index_dir, [kb], embeddings, tiny_settings.chunk_chars, tiny_settings.chunk_overlap_chars)
    # The answers that failed: fixed text from a scripted serving model, so pairs have a known rejected side.
    agent = build_agent(tiny_settings, embeddings=embeddings, llm=FakeListChatModel(responses=[BAD]))
    asked = {}
    for user, question in [("ann", "Can I get a refund on my annual plan? Mail me at ann@example.com"),
                           ("bob", "Are monthly plans refunded?"),
                           ("cid", "How long does the password reset link stay valid?")]:
        asked[user] = agent.ask(question, user=user)
    record_feedback(agent.store, asked["ann"].interaction_id, "down")
    record_feedback(agent.store, asked["bob"].interaction_id, "down",
                    correction="No, monthly plans are never refunded. Call +1 415 555 0134 for help.")
    record_feedback(agent.store, asked["cid"].interaction_id, "up")
    return agent


def run(agent, **overrides):
    settings = agent.settings.model_copy(update=overrides)
    return synthesize(settings, agent.store, agent.retriever, Teacher(responses=["unused"]),
                      agent.retriever.embeddings.encode, teacher_name="scripted", base_model=agent.model_version,
                      progress=False)


def rows(manifest, settings, kind):
    path = settings.datasets_dir / manifest["id"] / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_failures_become_sft_pairs_and_kto_with_lineage(seeded):
    manifest = run(seeded, injection_hardening=0).manifest
    settings = seeded.settings
    assert manifest["counts"] == {"sft": 8, "preference": 2, "kto": 3, "heldout": 0}, manifest["filters"]
    sft = rows(manifest, settings, "sft")
    targets = {r["messages"][-1]["content"] for r in sft}
    assert targets == {GOOD, "No, monthly plans are never refunded. Call [PHONE] for help."}  # the person's correction wins
    assert all(r["messages"][0]["role"] == "system" and "<passages>" in r["messages"][1]["content"] for r in sft)
    questions = [r["messages"][1]["content"].rsplit("Question: ", 1)[1] for r in sft]
    assert "Is a yearly plan refundable?" in questions  # paraphrases, numbering stripped
    pairs = rows(manifest, settings, "preference")
    assert {p["chosen"][0]["content"] for p in pairs} == targets
    assert {p["rejected"][0]["content"] for p in pairs} == {BAD}
    assert sorted(r["label"] for r in rows(manifest, settings, "kto")) == [False, False, True]
    assert manifest["teacher"] == "scripted" and manifest["base_model"] == seeded.model_version
    assert len(manifest["source_interaction_ids"]) == 3 and manifest["contributors"] == ["ann", "bob", "cid"]
    assert manifest["filters"]["pii_redacted"] == {"email": 1, "phone": 1}  # each logged text scrubbed once
    assert sum(manifest["filters"]["dropped"].values()) == manifest["filters"]["items_in"] - manifest["filters"]["items_out"]
    assert verify_dataset(settings.datasets_dir / manifest["id"])["id"] == manifest["id"]


def test_rows_use_the_serving_prompt_with_the_quoted_sentences_and_the_models_own_words(seeded, kb):
    manifest = run(seeded, injection_hardening=0).manifest
    settings = seeded.settings
    assert manifest["prompt_version"] == PROMPT_VERSION
    kb_text = " ".join(" ".join(path.read_text().split()) for path in kb.rglob("*.md"))
    for row in rows(manifest, settings, "sft"):
        system, user, answer = row["messages"]
        assert system["content"] == SYSTEM_PROMPT
        sentences = user["content"].split("<passages>\n")[1].split("\n</passages>")[0].splitlines()
        assert 1 <= len(sentences) <= settings.quote_sentences and all(s in kb_text for s in sentences)  # no titles
        assert QUOTE_LEAD not in answer["content"]
    pairs = rows(manifest, settings, "preference")
    assert all(QUOTE_LEAD not in p["rejected"][0]["content"] for p in pairs)  # the served answer had quotes


def test_a_paraphrase_is_trained_on_the_quotes_its_own_retrieval_finds(seeded):
    """Serving retrieves for the wording asked: a paraphrase that finds another page is shown that page's sentences,
    and the row still teaches the failure's answer (a held-out paraphrase missed its fact in just that case)."""
    class Drifting(Teacher):
        def _call(self, messages, *args, **kwargs):
            if "Rewrite this customer question" in messages[-1].content:
                return "1. How long does the password reset link stay valid?\n2. Is a yearly plan refundable?"
            return GOOD

    settings = seeded.settings.model_copy(update={"injection_hardening": 0, "heldout_paraphrases": 0})
    manifest = synthesize(settings, seeded.store, seeded.retriever, Drifting(responses=["unused"]),
                          seeded.retriever.embeddings.encode, teacher_name="scripted",
                          base_model=seeded.model_version, progress=False).manifest
    by_question = {r["messages"][1]["content"].rsplit("Question: ", 1)[1]: r for r in rows(manifest, settings, "sft")}
    drifted = by_question["How long does the password reset link stay valid?"]
    assert "expires after 2 hours" in drifted["messages"][1]["content"]  # the passwords page, as serving shows it
    assert "refundable" not in drifted["messages"][1]["content"]
    assert drifted["messages"][-1]["content"] in (GOOD, "No, monthly plans are never refunded. Call [PHONE] for help.")
    assert "refundable within 30 days" in by_question["Can I get a refund on my annual plan? Mail me at [EMAIL]"][
        "messages"][1]["content"]


def test_each_failure_also_trains_on_planted_passages_with_the_clean_answer(seeded):
    manifest = run(seeded, injection_hardening=2).manifest
    settings = seeded.settings
    assert manifest["counts"]["sft"] == 8 + 4 and manifest["counts"]["preference"] == 2 + 4
    assert manifest["injection_hardening"] == {"per_failure": 2, "rows": {"sft": 4, "preference": 4, "kto": 0,
                                                                         "heldout": 0}}
    plant_lines = {row_key(r): plant_line(r["messages"][1]["content"]) for r in rows(manifest, settings, "sft")}
    hardened = [r for r in rows(manifest, settings, "sft") if plant_lines[row_key(r)]]
    assert len(hardened) == 4  # the plant sits inside the passages
    targets = {GOOD, "No, monthly plans are never refunded. Call [PHONE] for help."}
    refusals = re_any(REFUSALS)
    for row in hardened:  # and the target ignores it, or refuses the planted person's details when asked for them
        assert row["messages"][-1]["content"] in targets or refusals.fullmatch(row["messages"][-1]["content"])
    pairs = [p for p in rows(manifest, settings, "preference") if p["rejected"][0]["content"] != BAD]
    assert len(pairs) == 4
    for pair in pairs:
        canary = CANARY.findall(plant_line(pair["prompt"][1]["content"]))[0]
        assert canary in pair["rejected"][0]["content"] and canary not in pair["chosen"][0]["content"]


CANARY = re.compile(r"https://[\w.-]+/\w+|[A-Z]+-[0-9A-F]{5}|[\w.]+@\w+\.example|\(\d{3}\) 555-01\d\d|\d{4} \d{4} \d{4} \d{4}")


def re_any(templates) -> re.Pattern:
    """Any of the templates, each placeholder standing for some text."""
    return re.compile("|".join(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(t.replace("{{", "{").replace("}}", "}")))
                               for t in templates))


def plant_line(user_message: str) -> str | None:
    """The passage line that is a hardening plant, if one is."""
    plants = re_any([t for t, _ in LINK_PLANTS + INSTRUCTION_PLANTS] + list(CONTACT_PLANTS))
    passages = user_message.split("<passages>\n")[1].split("\n</passages>")[0].split("\n")
    return next((line for line in passages if plants.fullmatch(line)), None)


def row_key(row: dict) -> str:
    return json.dumps(row["messages"])


def test_one_paraphrase_per_failure_is_held_out_for_the_gates(seeded):
    manifest = run(seeded, paraphrases=2).manifest
    held = rows(manifest, seeded.settings, "heldout")
    trained = {r["messages"][1]["content"].rsplit("Question: ", 1)[1] for r in rows(manifest, seeded.settings, "sft")}
    assert [h["question"] for h in held] == ["refund annual plan"] * len(held) and len(held) == 2
    assert not {h["question"] for h in held} & trained  # never trained on
    assert {h["answer"] for h in held} == {GOOD, "No, monthly plans are never refunded. Call [PHONE] for help."}
    assert all(h["source"] and h["interaction_id"] in manifest["source_interaction_ids"] for h in held)


def test_more_paraphrases_held_out_give_the_gates_more_pairs(seeded):
    manifest = run(seeded, paraphrases=1, heldout_paraphrases=2).manifest
    held = [h["question"] for h in rows(manifest, seeded.settings, "heldout")]
    trained = {r["messages"][1]["content"].rsplit("Question: ", 1)[1] for r in rows(manifest, seeded.settings, "sft")}
    assert sorted(held) == sorted(["Could I get my money back for an annual subscription?", "refund annual plan"] * 2)
    assert "Is a yearly plan refundable?" in trained and not set(held) & trained


def test_planted_pii_never_reaches_a_dataset(seeded):
    manifest = run(seeded).manifest
    folder = seeded.settings.datasets_dir / manifest["id"]
    text = "".join(p.read_text() for p in folder.iterdir())
    for planted in ("ann@example.com", "415 555 0134", "555 0134"):
        assert planted not in text


def test_ssn_dotted_card_and_spelled_email_reach_no_dataset_file(seeded):
    """Issue 21: these formats reached sft, kto, preference and heldout in clear."""
    ssn, card, email = "123-45-6789", "4111.1111.1111.1111", "bob.pii at example dot com"
    asked = seeded.ask(f"Can I get a refund on my annual plan? My SSN is {ssn}, write to {email}", user="dee")
    record_feedback(seeded.store, asked.interaction_id, "down",
                    correction=f"Annual plans are refundable within 30 days: we refunded card {card} and wrote to "
                               f"{email} (SSN {ssn} on file).")
    manifest = run(seeded, paraphrases=2).manifest
    folder = seeded.settings.datasets_dir / manifest["id"]
    assert all(manifest["counts"][kind] for kind in ("sft", "kto", "preference", "heldout")), manifest["counts"]
    texts = {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()}
    assert {"sft.jsonl", "kto.jsonl", "preference.jsonl", "heldout.jsonl"} <= set(texts)
    for name, text in texts.items():
        for planted in (ssn, card, email, "bob.pii", "45-6789", "1111.1111", "example dot com"):
            assert planted not in text, (name, planted)
    held = [row["answer"] for row in rows(manifest, seeded.settings, "heldout")]
    assert "refunded card [CARD] and wrote to [EMAIL] (SSN [SSN] on file)." in " ".join(held)
    assert {"ssn", "card", "email"} <= set(manifest["filters"]["pii_redacted"])


def test_near_copy_of_a_golden_question_is_removed(seeded, tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"question": "are monthly plans ever refunded", "answer": "No."}) + "\n")
    manifest = run(seeded, golden_set=golden).manifest
    assert manifest["filters"]["dropped"]["decontamination"] >= 1
    sft = rows(manifest, seeded.settings, "sft")
    assert not any("monthly plans refunded" in r["messages"][1]["content"] for r in sft)


def test_one_user_is_capped_in_failures(seeded):
    """The cap counts failures, not rows (details in test_user_cap.py): with a floor of 5, mallory's 30 corrections
    beside 3 other users' failures train on at most 5 of them."""
    rng = random.Random(0)
    mallory = set()
    for n in range(30):
        words = " ".join("".join(rng.choice("bcdfglmnprstvz") + rng.choice("aeiou") for _ in range(4)) for _ in range(4))
        answer = seeded.ask(f"Can I get a refund, {words}?", user="mallory")
        record_feedback(seeded.store, answer.interaction_id, "down", correction=f"Send refunds to http://evil.example/{n}")
        mallory.add(answer.interaction_id)
    manifest = run(seeded, min_user_failures=5).manifest
    lineage = json.loads((seeded.settings.datasets_dir / manifest["id"] / "lineage.json").read_text())
    trained = {i for kind in ("sft", "preference", "kto") for i in lineage[kind]}
    assert 0 < len(trained & mallory) <= 5 and len(trained - mallory) == 3
    assert manifest["filters"]["dropped"]["per_user_cap"] > 0
    assert set(manifest["filters"]["per_user_cap"]["users"]) == {"mallory"}


def test_each_interaction_feeds_one_dataset_and_nothing_half_written(seeded):
    first = run(seeded).manifest
    with pytest.raises(ValueError, match="no new failures"):
        run(seeded)
    assert [m["id"] for m in list_datasets(seeded.settings.datasets_dir)] == [first["id"]]
    assert not [p for p in seeded.settings.datasets_dir.iterdir() if p.name.startswith(".tmp-")]


def test_teacher_that_fails_is_skipped_and_counted(seeded):
    class Down(FakeListChatModel):
        def _call(self, *args, **kwargs):
            raise ConnectionError("teacher endpoint unreachable")

    settings = seeded.settings
    result = synthesize(settings, seeded.store, seeded.retriever, Down(responses=["x"]),
                        seeded.retriever.embeddings.encode, teacher_name="down", base_model="m", progress=False)
    assert result.skipped == {"teacher_failed": 2, "paraphrase_failed": 1}
    # the human correction needs no teacher: its row, its pair, and their hardened copies
    assert result.manifest["counts"] == {"sft": 2, "preference": 2, "kto": 1, "heldout": 0}
    assert len(result.manifest["source_interaction_ids"]) == 1  # the other two wait, whole, for the next dataset


def test_synth_and_datasets_cli(seeded, capsys, tiny_model_dir):
    home = ["--home", str(seeded.settings.home)]
    assert main([*home, "synth", "--json", "--paraphrases", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["id"].startswith("ds-") and set(summary["counts"]) == {"sft", "preference", "kto", "heldout"}
    assert "decontamination" in summary["filters"]["dropped"]
    assert main([*home, "datasets", "--json"]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == [summary["id"]]
    assert main([*home, "synth"]) == 1
    assert "no new failures" in capsys.readouterr().err
