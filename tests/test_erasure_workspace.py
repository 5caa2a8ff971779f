"""Forgetting a customer end to end, on real parts: two customers' traffic through the agent, corrections approved
into the example bank, a dataset built by `synthesize`, a candidate trained on it with the tiny model; then one
customer is forgotten and every byte of the workspace (the SQLite file and its WAL included) and every row of the
database is searched for their strings."""

from __future__ import annotations

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.erasure import Selector, check, forget
from agent.corrections import review_correction
from affinage.factory import build_agent
from agent.feedback import record_feedback
from retrieval.ingest import ingest
from synth_data.builder import synthesize
from affinage.core.datasets import KINDS, list_datasets
from tests.test_erasure import every_text
from tuning.registry import Registry
from tuning.train import train

pytestmark = pytest.mark.slow

BAD = "We never give refunds, sorry."
ALICE, BOB = "cust-alice-7781", "cust-bob-4410"
ALICE_STRINGS = ["zephyrine", "quillfeather", "zq-order-99871", ALICE]
BOB_STRINGS = ["barnabus", "okta"]


class Teacher(FakeListChatModel):
    """A scripted teacher at the edge of the test: paraphrases keep the customer's words, as real ones would."""

    def _call(self, messages, *args, **kwargs):
        asked = messages[-1].content
        if "Rewrite this customer question" in asked:
            word = "Zephyrine" if "Zephyrine" in asked else "Barnabus"
            return f"1. {word} asks: refund on a yearly plan?\n2. {word} wants money back\n3. {word} refund annual"
        return "Annual plans are refundable within 30 days of purchase."


def workspace_bytes(home) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes().lower() for p in home.rglob("*") if p.is_file()}


def files_holding(home, needle: str) -> list[str]:
    return sorted(name for name, data in workspace_bytes(home).items() if needle.lower().encode() in data)


@pytest.fixture
def served(tiny_settings, tiny_model_dir, db_url, kb, embeddings, tmp_path):
    """Traffic from two customers, their approved corrections, a dataset and a trained candidate."""
    on_sqlite = db_url.startswith("sqlite")  # then the database is the workspace's own file, searched with the rest
    settings = tiny_settings.model_copy(update={"database_url": None if on_sqlite else db_url, "paraphrases": 2,
                                                "injection_hardening": 1})
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, embeddings=embeddings, llm=FakeListChatModel(responses=[BAD]))
    for customer, question, correction in [
        (ALICE, "I am Zephyrine Quillfeather, order ZQ-ORDER-99871: can I get a refund on my annual plan?",
         "Zephyrine, annual plans are refundable within 30 days: open Settings > Billing."),
        (BOB, "Barnabus here: can I get a refund on my annual plan? Also, Okta?",
         "Barnabus, annual plans are refundable within 30 days of purchase."),
    ]:
        answer = agent.ask(question, channel="api", user="support-key", customer=customer)
        feedback = record_feedback(agent.store, answer.interaction_id, "down", correction=correction,
                                   user="support-key")
        review_correction(agent.store, feedback.id, True, "operator-1")
    manifest = synthesize(settings, agent.store, agent.retriever, Teacher(responses=["unused"]),
                          agent.retriever.embeddings.encode, teacher_name="scripted", base_model=tiny_model_dir.name,
                          progress=False).manifest
    config = tmp_path / "run.toml"
    config.write_text("max_steps = 2\nbatch_size = 2\ngrad_accum = 1\nsave_steps = 2\neval_steps = 2\nmax_length = 128\n"
                      "lora_r = 4\n"
                      "lora_alpha = 8\nearly_stopping_patience = 0\n")
    version = train(settings, "sft", config_path=config, progress=False)
    yield settings, agent, manifest, version, config
    agent.store.close()


def test_a_forgotten_customer_is_nowhere_in_the_workspace_or_the_database(served):
    settings, agent, dataset, version, config = served
    home = settings.home
    assert all(files_holding(home, s) or s in every_text(agent.store) for s in ALICE_STRINGS)
    print("files holding the customer's name before:", files_holding(home, "zephyrine"))
    assert {f"datasets/{dataset['id']}/{k}.jsonl" for k in KINDS} <= set(files_holding(home, "zephyrine"))

    # the customer travels with what is derived from their interactions: example-bank entries, dataset lineage
    assert {e.customer for e in agent.examples.all()} == {ALICE, BOB}
    lineage = json.loads((settings.datasets_dir / dataset["id"] / "lineage.json").read_text())
    assert set(lineage["customers"].values()) == {ALICE, BOB}

    report = forget(settings, agent.store, Selector(customer=ALICE), actor="admin-1")

    assert report["counts"]["interactions"] == 1 and report["counts"]["examples"] == 1
    assert [d["old"] for d in report["datasets"]] == [dataset["id"]] and report["versions"] == [version.id]
    leaks = {s: files_holding(home, s) for s in ALICE_STRINGS if files_holding(home, s)}
    assert leaks == {}, f"the customer's strings survive in workspace files: {leaks}"
    database = every_text(agent.store)
    assert [s for s in ALICE_STRINGS if s in database] == []
    # the other customer keeps everything: rows, example, and a superseding dataset trained on nothing of Alice
    assert all(s in database for s in BOB_STRINGS)
    new = report["datasets"][0]["new"]
    assert [m["id"] for m in list_datasets(settings.datasets_dir)] == [new]
    assert files_holding(home, "barnabus") and all(f"datasets/{new}/" in f or f.startswith("affinage.db")
                                                   for f in files_holding(home, "barnabus"))
    assert Registry.open(settings, agent.store).get(version.id).trained_on_erased is not None
    assert check(settings, agent.store, Selector(customer=ALICE), bank=agent.examples) == {}


def test_no_candidate_continues_an_adapter_trained_on_erased_data(served):
    settings, agent, _, version, config = served
    registry = Registry.open(settings, agent.store)
    registry.record_gate(version.id, True, {"report": "report.html"})
    registry.promote(version.id, actor="operator-1")
    forget(settings, agent.store, Selector(customer=ALICE), actor="admin-1")
    with pytest.raises(ValueError, match=f"continue the active version {version.id}, which was trained on erased data"):
        train(settings, "sft", config_path=config, progress=False)
    assert registry.active_id() == version.id  # flagged, never swapped out without the operator
    config.write_text(config.read_text() + 'start_from = "base"\n')
    fresh = train(settings, "sft", config_path=config, progress=False)
    assert fresh.manifest["start_from"] == "base"
