"""The streaming link guard: an off-policy link never reaches the customer, in pieces or whole; an allowed one passes
whole; text without links streams as it comes; the agent records what was removed as an ``output_guard`` signal."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.core import prompts
from affinage.core.settings import load_settings
from affinage.core.prompts import QUOTE_LEAD
from affinage.core.tables import Interaction
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service import auth
from agent.guard import WITHHELD
from agent.link_guard import LEAK, REMOVED, LinkGuard, OutputGuard
from retrieval.ingest import ingest
from tests.agent.conftest import bearer
from tests.agent.light_server import HashEmbeddings


def run(guard, pieces: list[str]) -> list[str]:
    """What the customer receives after each piece, then at the end."""
    return [guard.feed(piece) for piece in pieces] + [guard.finish()]


def test_an_off_policy_link_split_over_pieces_is_removed_and_an_allowed_one_kept_whole():
    guard = LinkGuard(["example.com"])
    sent = run(guard, ["Reset it at ", "htt", "ps://ev", "il.example/x y", "ou or at https://", "help.example.com/r",
                       "eset. Done."])
    assert sent == ["Reset it at ", "", "", f"{REMOVED} ", "you or at ", "", "https://help.example.com/reset. ", "Done."]
    assert "".join(sent) == f"Reset it at {REMOVED} you or at https://help.example.com/reset. Done."
    assert guard.removed == ["https://evil.example/x"]


def test_no_piece_ever_carries_part_of_a_removed_link():
    link = "https://evil.example/steal?session=1"
    text = f"Sign in at {link} now, then at evil.com/reset."
    for size in (1, 2, 3, 5, 8):
        guard = LinkGuard(["example.com"])
        sent = run(guard, [text[i:i + size] for i in range(0, len(text), size)])
        assert "".join(sent) == f"Sign in at {REMOVED} now, then at {REMOVED}."
        assert not any(fragment in piece for piece in sent for fragment in ("evil", "://", "steal", ".com"))
        assert guard.removed == [link, "evil.com/reset"]


def test_a_bare_domain_is_a_link_too():
    guard = LinkGuard(["lumendesk.com"])
    assert "".join(run(guard, ["Go to evil", ".com/reset or status.lumendesk.com."])) == \
        f"Go to {REMOVED} or status.lumendesk.com."
    assert guard.removed == ["evil.com/reset"]


def test_text_without_links_streams_without_delay():
    guard = LinkGuard([])
    assert [guard.feed(p) for p in ("Annual plans ", "are refundable ", "within 30 days.\n")] == \
        ["Annual plans ", "are refundable ", "within 30 days.\n"]
    # a word still being written is held only until it ends: it could yet become "plans.com"
    assert [guard.feed(p) for p in ("Open", " Settings", " >", " Billing")] == ["", "Open ", "Settings >", " "]
    assert guard.finish() == "Billing" and guard.removed == []


def test_with_no_links_allowed_every_link_goes():
    guard = LinkGuard(())
    assert "".join(run(guard, ["See (https://docs.example.com/a) and <a.io>."])) == f"See ({REMOVED}) and <{REMOVED}>."


def test_the_leak_guard_sees_the_model_s_words_before_the_link_guard():
    """A system-prompt code inside a link is a leak: the link guard alone would have hidden it behind a marker."""
    code = "CANARY-SYS-5JX8"
    guard = OutputGuard(f"{prompts.SYSTEM_PROMPT} Internal reference code: {code}.", "", ["example.com"])
    answer = f"Fine. Also see https://evil.example/{code} please."
    sent = run(guard, [answer[i:i + 4] for i in range(0, len(answer), 4)])
    assert guard.leaked and guard.shown.endswith(WITHHELD) and "5JX8" not in guard.shown
    assert "".join(sent) == guard.shown and guard.removed[0] == LEAK


def test_a_link_in_the_answer_is_removed_the_signal_recorded_and_the_finish_says_so(tiny_settings, kb):
    (kb / "billing" / "invoices.md").write_text(
        "# Invoices\n\n## Download an invoice\n\nInvoices can be downloaded from Settings > Billing > Invoices. "
        "Invoices can also be downloaded from https://billing.example.com/invoices at any time.\n")
    embeddings = HashEmbeddings()
    ingest(tiny_settings.index_dir, [kb], embeddings, tiny_settings.chunk_chars, tiny_settings.chunk_overlap_chars)
    said = "Download it at https://billing.example.com/invoices or https://evil.example/invoices today."
    agent = build_agent(tiny_settings, llm=FakeListChatModel(responses=[said]), embeddings=embeddings)
    assert agent.link_domains == ("billing.example.com",)  # unset: the knowledge base's own links
    *pieces, answer = agent.stream("Where can invoices be downloaded?", channel="api", user="alice")
    assert all("evil" not in piece for piece in pieces)
    assert answer.answer.startswith(f"Download it at https://billing.example.com/invoices or {REMOVED} today.")
    # the guard trusts the knowledge base's link in the model's words, but only a listed domain gets a sentence quoted
    assert QUOTE_LEAD in answer.answer and "Settings > Billing > Invoices" in answer.answer
    assert "at any time" not in answer.answer
    assert answer.finish_reason == "content_filter"
    with agent.store.session() as session:
        row = session.get(Interaction, answer.interaction_id)
    guarded = [s for s in row.signals if s["kind"] == "output_guard"]
    assert guarded == [{"kind": "output_guard", "reason": "removed before it was shown: https://evil.example/invoices",
                        "strength": 1.0}]


@pytest.mark.parametrize("configured, expected", [([], ()), (["evil.example"], ("evil.example",))])
def test_the_operator_s_list_replaces_the_knowledge_base_s(tiny_settings, kb, configured, expected):
    (kb / "billing" / "invoices.md").write_text(
        "# Invoices\n\n## Download an invoice\n\nInvoices can be downloaded from Settings > Billing > Invoices. "
        "Invoices can also be downloaded from https://portal.example.com/invoices at any time.\n")
    embeddings = HashEmbeddings()
    ingest(tiny_settings.index_dir, [kb], embeddings, tiny_settings.chunk_chars, tiny_settings.chunk_overlap_chars)
    settings = tiny_settings.model_copy(update={"allowed_link_domains": configured})
    agent = build_agent(settings, llm=FakeListChatModel(responses=["See https://portal.example.com/invoices now."]),
                        embeddings=embeddings)
    assert agent.link_domains == expected
    answer = agent.ask("Where can invoices be downloaded?", log=False)
    assert answer.answer.startswith(f"See {REMOVED} now.") and "portal.example.com" not in answer.answer


def test_the_console_lists_what_the_guards_removed_newest_first_for_operators_only(home, kb):
    settings = load_settings(home)
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    said = ["Reset it at https://evil.example/a.", "Reset it from the sign-in page.", "Reset it at evil.com/b <b>."]
    agent = build_agent(settings, llm=FakeListChatModel(responses=said), embeddings=embeddings)
    keys = {role: auth.create_key(agent.store, role, role) for role in ("agent", "operator")}
    questions = ["How long is the password reset link valid?", "How do I reset my password?",
                 "Where do I reset my password <script>?"]
    with TestClient(create_app(settings, agent=agent)) as client:
        ids = [client.post("/v1/chat/completions", headers=bearer(keys["agent"]), json={
            "messages": [{"role": "user", "content": q}]}).json()["affinage"]["interaction_id"] for q in questions]
        assert client.get("/api/operator/guard-events", headers=bearer(keys["agent"])).status_code == 403
        events = client.get("/api/operator/guard-events", headers=bearer(keys["operator"])).json()
        assert [(e["interaction_id"], e["removed"], e["question"]) for e in events] == [
            (ids[2], "evil.com/b", questions[2]), (ids[0], "https://evil.example/a", questions[0])]
        assert all(e["model_version"] == "FakeListChatModel" and e["at"] for e in events)
        older = client.get("/api/operator/guard-events", headers=bearer(keys["operator"]),
                           params={"limit": 1, "before": events[0]["at"]}).json()
        assert [e["interaction_id"] for e in older] == [ids[0]]
        refused = client.get("/api/operator/guard-events?limit=0", headers=bearer(keys["operator"]))
        assert refused.status_code == 400 and "limit" in refused.json()["error"]["message"]
