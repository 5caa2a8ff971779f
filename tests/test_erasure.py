"""The right to be forgotten, on SQLite and PostgreSQL: two customers' traffic, feedback, corrections in the example
bank, job logs, a dataset and a version trained on it; one customer is forgotten and nothing of them is left (every
text column of every table is searched), the other keeps everything, the records hold only hashes, ids and numbers,
an interrupted erasure finishes when run again, and a restore is undone by --reapply."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from sqlalchemy import select

import affinage.erasure as erasure
from affinage.cli import main
from affinage.erasure import Selector, SelectorError, check, forget, reapply
from affinage.core.settings import load_settings
from agent.corrections import review_correction
from agent.example_bank import ExampleBank
from affinage.factory import build_agent
from agent.feedback import record_feedback
from agent.service import auth
from affinage.service import create_app
from affinage.core.tables import Base, Erasure, Example, Feedback, Interaction, Job, JobLog
from affinage.core.store import Store
from retrieval.ingest import ingest
from affinage.core.datasets import list_datasets, write_dataset
from tests.agent.conftest import bearer
from tests.agent.light_server import HashEmbeddings
from tests.agent.service_harness import LiveServer
from tests.agent.test_web_chat import PageLog, browser, expect, screenshot  # noqa: F401 - fixtures
from tuning.registry import Registry

ANSWER = "Annual plans are refundable within 30 days of purchase: open Settings > Billing. [billing/refunds.md]"
ALICE = "cust-alice-7"
BOB = "cust-bob-9"
ALICE_STRINGS = ("alice", "martin", ALICE, "conv-a1")  # none may survive her erasure, in any case
BOB_STRINGS = ("bob stone", "bob@example.org", BOB)


class World:
    """A workspace with both customers' data, as a running service would hold it."""

    def __init__(self, settings, agent):
        self.settings, self.agent, self.store = settings, agent, agent.store
        self.ids: dict[str, list[str]] = {"alice": [], "bob": [], "anon": []}


@pytest.fixture
def world(home, kb, db_url) -> World:
    settings = load_settings(home, database_url=db_url)
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, llm=FakeListChatModel(responses=[ANSWER]), embeddings=embeddings)
    w = World(settings, agent)
    for who, customer, conversation, question in [
        ("alice", ALICE, "conv-a1", "My email is alice.martin@example.com: can I get a refund on my annual plan?"),
        ("alice", ALICE, "conv-a1", "Alice Martin again: how do I reset my password?"),
        ("bob", BOB, "conv-b1", "I am Bob Stone (bob@example.org): how do I set up Okta single sign-on?"),
        ("anon", None, None, "Are monthly plans refunded?"),
    ]:
        answer = agent.ask(question, channel="api", user="support-key", customer=customer, conversation_id=conversation)
        w.ids[who].append(answer.interaction_id)
    store = w.store
    alice_fb = record_feedback(store, w.ids["alice"][0], "down", correction="Alice, annual plans are refundable "
                               "within 30 days: open Settings > Billing.", comment="Ms Martin was upset",
                               user="support-key")
    record_feedback(store, w.ids["alice"][1], "up", user="support-key")
    bob_fb = record_feedback(store, w.ids["bob"][0], "down", correction="Bob Stone: paste the metadata URL into "
                             "Settings > Security.", user="support-key")
    record_feedback(store, w.ids["anon"][0], "down", correction="No, monthly plans are not refunded.")
    for feedback in (alice_fb, bob_fb):
        review_correction(store, feedback.id, True, "operator-1")
    agent.examples.add("Alice Martin asked about invoices", "Invoices are under Settings > Billing.", added_by="op")
    agent.examples.add("Where are invoices?", "Invoices are under Settings > Billing.", added_by="op")
    with store.session() as session:
        job = Job(kind="cycle", trigger="test", outputs={})
        session.add(job)
        session.flush()
        session.add_all([JobLog(job_id=job.id, message=f"teacher skipped interaction {w.ids['alice'][0]}"),
                         JobLog(job_id=job.id, message=f"teacher skipped interaction {w.ids['bob'][0]}"),
                         JobLog(job_id=job.id, message="synth: 3 rows written")])
    # A dataset drawing on both customers, and a version trained on it.
    rows = {"sft": [{"messages": [{"role": "user", "content": "Refund on my annual plan? alice.martin@example.com"}]},
                    {"messages": [{"role": "user", "content": "How do I set up Okta single sign-on?"}]}]}
    lineage = {"sft": [w.ids["alice"][0], w.ids["bob"][0]], "contributors": {}}
    w.dataset = write_dataset(settings.datasets_dir, rows, {"base_model": "tiny", "teacher": "scripted",
                              "source_interaction_ids": [w.ids["alice"][0], w.ids["bob"][0]]}, lineage)["id"]
    registry = Registry.open(settings, store)
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(b"weights")
    (staged / "adapter_config.json").write_text("{}")
    registry.add(staged, {"id": "v-1", "method": "sft", "kind": "lora", "created_at": "v-1",
                          "datasets": [{"id": w.dataset}], "metrics": {}})
    yield w
    store.close()


def every_text(store: Store) -> str:
    """Every value of every row of every table, as one lower-case text."""
    parts = []
    with store.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                parts += [json.dumps(v, default=str) for v in row]
    return "\n".join(parts).lower()


def count(store: Store, model, *where) -> int:
    with store.session() as session:
        return len(session.scalars(select(model).where(*where)).all())


def test_the_customer_is_recorded_on_interactions_and_feedback(world):
    with world.store.session() as session:
        customers = {i.id: i.customer for i in session.scalars(select(Interaction))}
        feedback = {f.interaction_id: f.customer for f in session.scalars(select(Feedback))}
    assert [customers[i] for i in world.ids["alice"]] == [ALICE, ALICE] and customers[world.ids["anon"][0]] is None
    assert feedback == {world.ids["alice"][0]: ALICE, world.ids["alice"][1]: ALICE, world.ids["bob"][0]: BOB,
                        world.ids["anon"][0]: None}


def test_forgetting_a_customer_leaves_nothing_of_them_and_everything_of_the_others(world):
    store, bank = world.store, world.agent.examples
    before = every_text(store)
    assert all(s in before for s in ALICE_STRINGS + BOB_STRINGS)
    alice_example = bank.select("can I get a refund on my annual plan?", 1, 0.5)[0][0]  # the bank has cached it
    assert alice_example.interaction_id == world.ids["alice"][0]

    report = forget(world.settings, store, Selector(customer=ALICE), actor="admin-1")

    assert report["counts"] == {"interactions": 2, "feedback": 2, "corrections": 1, "examples": 1, "job_logs": 1,
                                "signal_quotes": 0}
    assert not report["nothing_found"] and not report["resumed"] and report["state"] == "done"
    after = every_text(store)
    # all that is left is a curated example that names her but is not linked to her id: --matching finds that
    assert after.count("alice") == after.count("martin") == 1 and "alice martin asked about invoices" in after
    assert all(s in after for s in BOB_STRINGS)
    # the others keep everything: Bob's and the anonymous interaction, feedback, examples, job-log lines
    assert count(store, Interaction) == 2 and count(store, Feedback) == 2
    assert count(store, Example, Example.interaction_id == world.ids["bob"][0]) == 1
    assert count(store, Example, Example.interaction_id.is_(None)) == 2  # curated ones: not hers by customer id
    assert count(store, JobLog) == 2
    # the running service's bank no longer offers her corrected answer
    assert all(e.id != alice_example.id for e, _ in bank.select("can I get a refund on my annual plan?", 3, -1.0))
    # the record: who, when, a hash of the selector, random ids and numbers
    with store.session() as session:
        row = session.scalars(select(Erasure)).one()
    assert row.selector_hash == hashlib.sha256(f"customer:{ALICE}".encode()).hexdigest() == report["selector_hash"]
    assert (row.actor, row.state, row.selector_kind) == ("admin-1", "done", "customer") and row.finished_at
    assert sorted(row.interaction_ids) == sorted(world.ids["alice"])
    record = json.dumps({c.name: getattr(row, c.name) for c in Erasure.__table__.columns}, default=str).lower()
    assert [s for s in ALICE_STRINGS if s in record] == []
    journal = erasure.journal_path(world.settings).read_text()
    assert [s for s in ALICE_STRINGS if s in journal.lower()] == [] and world.ids["alice"][0] in journal
    assert check(world.settings, store, Selector(customer=ALICE), bank=bank) == {}
    # the dataset drawing on her is superseded by one without her row, and the version trained on it is flagged
    assert [(d["old"], d["removed"]["sft"]) for d in report["datasets"]] == [(world.dataset, 1)]
    assert report["versions"] == ["v-1"]
    assert [m["id"] for m in list_datasets(world.settings.datasets_dir)] == [report["datasets"][0]["new"]]
    assert Registry.open(world.settings, store).get("v-1").trained_on_erased is not None
    files = "".join(p.read_text() for p in world.settings.datasets_dir.rglob("*") if p.is_file()).lower()
    assert "alice" not in files and "okta" in files

    assert forget(world.settings, store, Selector(matching="Alice Martin"), actor="admin-1")["counts"]["examples"] == 1
    after = every_text(store)
    assert [s for s in ALICE_STRINGS if s in after] == [], "the customer's data survived in the database"
    assert all(s in after for s in BOB_STRINGS) and count(store, Example) == 2


def test_with_erasure_followup_retrain_a_job_is_queued_for_the_flagged_versions(world):
    settings = world.settings.model_copy(update={"erasure_followup": "retrain"})
    report = forget(settings, world.store, Selector(customer=ALICE), actor="admin-1")
    assert report["versions"] == ["v-1"] and report["follow_up_job"]
    with world.store.session() as session:
        job = session.get(Job, report["follow_up_job"])
    assert job.state == "queued" and report["erasure_id"] in job.trigger


def test_matching_text_finds_a_name_in_questions_corrections_and_curated_examples(world):
    report = forget(world.settings, world.store, Selector(matching="ALICE MARTIN"), actor="admin-1")
    # her second question names her; the curated example names her; her first question only has her email
    assert report["counts"]["interactions"] == 1 and report["counts"]["examples"] == 1
    assert count(world.store, Example, Example.question.contains("Alice Martin")) == 0
    assert check(world.settings, world.store, Selector(matching="alice martin")) == {}
    report = forget(world.settings, world.store, Selector(matching="alice.martin@EXAMPLE.com"), actor="admin-1")
    assert report["counts"]["interactions"] == 1 and report["counts"]["corrections"] == 1
    assert count(world.store, Interaction) == 2  # Bob's and the anonymous one


def test_another_interaction_quoting_an_erased_question_in_its_signals_is_scrubbed(world):
    """The rephrase detector quotes the earlier question; a shared key's next interaction may be someone else's."""
    quoted = {"kind": "rephrase", "reason": 'similar (0.91) to "Alice Martin again: how do I reset my password?" '
              "asked 12s earlier", "strength": 0.91}
    other = world.store.add(Interaction(question="how do I reset my password?", answer="Use Forgot password.",
                                        signals=[quoted, {"kind": "thumbs_down", "reason": "1 of 1", "strength": 1.0}],
                                        prompt_version="p", model_version="m", latency_s=0.1, customer="cust-dan"))
    report = forget(world.settings, world.store, Selector(conversation="conv-a1"), actor="admin-1")
    assert report["counts"]["interactions"] == 2 and report["counts"]["signal_quotes"] == 1
    kept = world.store.get_interaction(other.id)
    assert [s["reason"] for s in kept.signals] == ["[erased]", "1 of 1"]
    assert "alice martin again" not in every_text(world.store)


def test_an_unknown_customer_is_nothing_found_with_exit_0(world, monkeypatch, capsys):
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", world.settings.db_url)
    home = str(world.settings.home)
    assert main(["--home", home, "forget", "--customer", "nobody-42"]) == 0
    assert "nothing found" in capsys.readouterr().out
    assert main(["--home", home, "forget", "--customer", "nobody-42", "--check"]) == 0
    assert count(world.store, Interaction) == 4


def test_the_cli_erases_checks_and_refuses_bad_selectors(world, monkeypatch, capsys):
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", world.settings.db_url)
    home = str(world.settings.home)
    assert main(["--home", home, "forget", "--customer", ALICE, "--check"]) == 1
    out = capsys.readouterr().out
    assert "NOT clean" in out and "interactions 2" in out and "alice" not in out.lower().replace(ALICE, "")
    assert main(["--home", home, "forget", "--customer", ALICE]) == 0
    out = capsys.readouterr().out
    assert "interactions" in out and "versions flagged 'trained on erased data': v-1" in out
    assert main(["--home", home, "forget", "--customer", ALICE, "--check"]) == 0
    assert capsys.readouterr().out.startswith("clean")
    assert main(["--home", home, "forget"]) == 2
    assert "give exactly one of customer, conversation, interaction, matching; got none" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--home", home, "forget", "--customer", ALICE, "--matching", "alice"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["--home", home, "forget", "--reapply", "--customer", BOB]) == 2
    assert main(["--home", home, "forget", "--matching", "al"]) == 2
    assert "shorter than 3 characters" in capsys.readouterr().err


def test_an_interrupted_erasure_is_finished_by_running_it_again(world, monkeypatch):
    """Killed inside the deletion (rolled back) and again after it (committed, datasets not yet done): each rerun
    resumes the same erasure row, and the report counts the whole erasure."""
    settings, store = world.settings, world.store
    real_delete, real_supersede = erasure.delete_rows, erasure._supersede

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("SIGKILL")

    monkeypatch.setattr(erasure, "delete_rows", killed)
    with pytest.raises(KeyboardInterrupt):
        forget(settings, store, Selector(customer=ALICE), actor="admin-1")
    with store.session() as session:
        row = session.scalars(select(Erasure)).one()
    assert row.state == "running" and sorted(row.interaction_ids) == sorted(world.ids["alice"])
    assert count(store, Interaction, Interaction.customer == ALICE) == 2  # the deletion was one transaction

    monkeypatch.setattr(erasure, "delete_rows", real_delete)
    monkeypatch.setattr(erasure, "_supersede", killed)
    with pytest.raises(KeyboardInterrupt):
        forget(settings, store, Selector(customer=ALICE), actor="admin-1")
    assert count(store, Interaction, Interaction.customer == ALICE) == 0
    assert check(settings, store, Selector(customer=ALICE)) == {"unfinished_erasures": 1, "dataset_rows:"
                                                                + world.dataset: 1}

    monkeypatch.setattr(erasure, "_supersede", real_supersede)
    report = forget(settings, store, Selector(customer=ALICE), actor="admin-1")
    assert report["resumed"] and report["erasure_id"] == row.id
    assert report["counts"] == {"interactions": 2, "feedback": 2, "corrections": 1, "examples": 1, "job_logs": 1,
                                "signal_quotes": 0}
    assert report["versions"] == ["v-1"] and len(report["datasets"]) == 1
    assert count(store, Erasure) == 1 and check(settings, store, Selector(customer=ALICE)) == {}


def test_reapply_erases_again_what_a_restore_brought_back(world):
    settings, store = world.settings, world.store
    with store.session() as session:  # the backup: taken before the erasure
        backup = [session.scalars(select(model)).all() for model in (Interaction, Feedback, Example)]
    forget(settings, store, Selector(customer=ALICE), actor="admin-1")
    with store.session() as session:  # the restore: her rows are back, and the erasure's record is not
        for rows in backup:
            for row in rows:
                session.merge(row)
        session.query(Erasure).delete()
    assert count(store, Interaction, Interaction.customer == ALICE) == 2

    report = reapply(settings, store, actor="admin-1")
    assert report["erasures"] == 1 and report["counts"]["interactions"] == 2 and report["counts"]["examples"] == 1
    assert [s for s in ("alice.martin", ALICE, "conv-a1", "alice martin again") if s in every_text(store)] == []
    assert count(store, Erasure, Erasure.state == "done") == 1  # the record is back, from the journal
    assert check(settings, store, Selector(customer=ALICE)) == {}
    assert reapply(settings, store, actor="admin-1")["counts"]["interactions"] == 0


def test_the_bank_cache_follows_a_swap_that_keeps_the_count(db_url, tmp_path):
    """An example erased and another added between two questions: the count is the same, the cache must not be."""
    store = Store(db_url)
    bank = ExampleBank(store, HashEmbeddings())
    erased = bank.add("How do I export invoices for Zoë Kowalski?", "Under Billing.")
    bank.add("How do I reset my password?", "Use Forgot password.")
    assert bank.select("export invoices for Zoë Kowalski", 1, 0.5)[0][0].id == erased.id
    with store.session() as session:
        session.delete(session.get(Example, erased.id))
    added = bank.add("How do I export invoices?", "Under Billing > Invoices.")
    assert [e.id for e, _ in bank.select("export invoices for Zoë Kowalski", 2, -1.0)][0] == added.id
    assert erased.id not in {e.id for e in bank.in_memory()}
    store.close()


def test_selectors_need_exactly_one_usable_value():
    for bad in ({}, {"customer": "a", "conversation": "b"}, {"customer": " "}, {"matching": "ab"}):
        with pytest.raises(SelectorError):
            Selector(**bad)
    assert Selector(customer=" c1 ").value == "c1"
    assert Selector(matching="Zoë@Example.com").hash == Selector(matching="zoë@example.com").hash


@pytest.fixture
def service(world):
    app = create_app(world.settings, agent=world.agent)
    keys = {role: auth.create_key(world.store, f"test-{role}", role) for role in auth.ROLES}
    with TestClient(app) as client:
        yield client, keys


def test_the_route_is_for_admins_and_checks_the_running_bank(world, service):
    client, keys = service
    for role in ("agent", "operator"):
        response = client.post("/api/admin/forget", json={"customer": ALICE}, headers=bearer(keys[role]))
        assert response.status_code == 403
    admin = bearer(keys["admin"])
    response = client.post("/api/admin/forget", json={}, headers=admin)
    assert response.status_code == 400 and "got none" in response.json()["error"]["message"]
    response = client.post("/api/admin/forget", json={"customer": ALICE, "matching": "alice"}, headers=admin)
    assert response.status_code == 400 and "got customer, matching" in response.json()["error"]["message"]
    assert count(world.store, Interaction, Interaction.customer == ALICE) == 2  # refused requests erase nothing

    response = client.post("/api/admin/forget", json={"customer": ALICE, "check": True}, headers=admin)
    assert response.status_code == 200 and response.json()["left"]["interactions"] == 2
    response = client.post("/api/admin/forget", json={"customer": ALICE}, headers=admin)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["counts"]["interactions"] == 2 and report["actor"] == "test-admin"
    assert "alice" not in response.text.lower().replace(ALICE.lower(), "")
    response = client.post("/api/admin/forget", json={"customer": ALICE, "check": True}, headers=admin)
    assert response.json() == {"selector": "customer", "selector_hash": report["selector_hash"], "left": {},
                               "clean": True}
    response = client.post("/api/admin/forget", json={"customer": "nobody"}, headers=admin)
    assert response.status_code == 200 and response.json()["nothing_found"]


def test_chat_api_records_the_customer(world, service):
    """OpenAI's ``user`` field names the end customer: it is kept on the interaction (and its feedback)."""
    client, keys = service
    response = client.post("/v1/chat/completions", headers=bearer(keys["agent"]), json={
        "model": "default", "user": "cust-carol-3",
        "messages": [{"role": "user", "content": "Refund on annual plans?"}]})
    assert response.status_code == 200, response.text
    interaction_id = response.json()["affinage"]["interaction_id"]
    assert world.store.get_interaction(interaction_id).customer == "cust-carol-3"
    assert client.post("/api/feedback", headers=bearer(keys["agent"]),
                       json={"interaction_id": interaction_id, "rating": "down"}).status_code == 201
    assert count(world.store, Feedback, Feedback.customer == "cust-carol-3") == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the route runs on both databases above
def test_the_console_erases_a_customer_with_an_admin_key(world, browser):  # noqa: F811 - the fixture
    keys = {role: auth.create_key(world.store, f"test-{role}", role) for role in ("operator", "admin")}
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    log = PageLog(page)
    with LiveServer(create_app(world.settings, agent=world.agent)) as server:
        for role in ("operator", "admin"):
            page.goto(server.url + "/operator")
            page.fill("#key-input", keys[role])
            page.click("[data-testid=key-save]")
            expect(page.locator("#active-version")).to_have_text("active: base")
            page.fill("[data-testid=erase-value]", ALICE)
            page.click("[data-testid=erase-submit]")
            expect(page.locator("#notice")).to_contain_text("Tick 'Erase this data for good' first")
            page.check("[data-testid=erase-confirm]")
            page.click("[data-testid=erase-submit]")
            if role == "operator":
                expect(page.locator("#notice")).to_contain_text("needs the admin role")
                assert count(world.store, Interaction, Interaction.customer == ALICE) == 2
                page.click("#sign-out")
        expect(page.locator("#notice")).to_have_text("Erased.")
        report = page.locator("[data-testid=erase-report]")
        expect(report).to_contain_text("interactions: 2")
        expect(report).to_contain_text("versions flagged 'trained on erased data': v-1")
        expect(page.locator("[data-testid=audit]")).to_contain_text("erasure")
        page.select_option("[data-testid=erase-kind]", "customer")
        page.fill("[data-testid=erase-value]", ALICE)
        page.click("[data-testid=erase-check]")
        expect(report).to_have_text("clean: nothing left for this customer.")
        screenshot(page, "console-erasure.png")
    assert count(world.store, Interaction, Interaction.customer == ALICE) == 0
    assert log.unexpected_console_errors() == []
    context.close()
