"""Hostile text in questions, answers, citations, corrections and names, in both web pages in a real Chromium:
shown as text, nothing runs, nothing is fetched from elsewhere. (Answers and passages alone are in test_web_chat.py,
gate reports and job logs in tests/tuning/test_operator_console.py.)"""

from __future__ import annotations

from urllib.parse import urlsplit

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from sqlalchemy import select

from affinage.core.settings import load_settings
from agent.corrections import review_correction
from affinage.factory import build_agent
from agent.feedback import record_feedback
from affinage.service import create_app
from agent.service.auth import create_key
from affinage.core.tables import Feedback
from retrieval.ingest import ingest
from synth_data.builder import synthesize
from tests.agent.light_server import HashEmbeddings
from tests.agent.service_harness import LiveServer
from tests.agent.test_web_chat import PageLog, answered, ask, browser, expect, page, sign_in, wait_for_answer  # noqa: F401

XSS = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
       '<svg onload="window.__pwned=1"></svg><a href="javascript:window.__pwned=1">click</a>')
MARKDOWN = "![tracker](http://127.0.0.2:9/pixel.png) [login](http://127.0.0.2:9/login)"
HOSTILE = f"{XSS} {MARKDOWN}"


def assert_inert(page, server: LiveServer) -> None:
    page.wait_for_timeout(500)  # time for anything wrongly injected to load or run
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img, script:not([src]), [onload], [onerror], a[href^='javascript:']").count() == 0
    outside = [r.url for r in page.log.requests if urlsplit(r.url).netloc not in ("", f"127.0.0.1:{server.port}")
               and not r.url.startswith(("data:", "about:"))]
    assert outside == []
    assert page.log.unexpected_console_errors() == []


def hostile_agent(home, kb, answer: str):
    # the hostile question shares few words with the passage: quote its sentences however weakly they match
    settings = load_settings(home, rate_limit_per_minute=1000, paraphrases=1, quote_min_similarity=-1.0)
    embeddings = HashEmbeddings()
    (kb / "billing" / "gift-cards.md").write_text(f"# Gift cards\n\n## Redeem a gift card\n\nRedeem under Settings "
                                                  f"> Billing > Gift cards. {HOSTILE}\n")
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    llm = FakeListChatModel(responses=[answer], sleep=0.002)
    return settings, build_agent(settings, llm=llm, embeddings=embeddings)


def test_hostile_question_answer_and_correction_stay_text_in_the_chat_page(page, home, kb):  # noqa: F811
    question = f"How do I redeem a gift card? {HOSTILE}"
    answer_text = f"Under Settings > Billing > Gift cards. {HOSTILE}"
    correction = f"Redeem it under Settings > Billing. {HOSTILE}"
    settings, agent = hostile_agent(home, kb, answer_text)
    key = create_key(agent.store, "ann", "agent")

    with LiveServer(create_app(settings, agent=agent)) as server:
        sign_in(page, server, key)
        ask(page, question)
        answer = wait_for_answer(page, 1)
        expect(page.locator(".message.user .message-body")).to_have_text(question)
        expect(answer.locator(".message-body")).to_have_text(answered(answer_text))
        answer.locator(".thumb-down").click()
        answer.locator(".correction").fill(correction)
        answer.locator(".comment").fill(HOSTILE)
        answer.locator(".feedback-submit").click()
        expect(answer.locator(".feedback-status")).to_have_text("Thanks — feedback saved")
        assert_inert(page, server)

        page.reload()  # the conversation is rebuilt from sessionStorage: the same text, still inert
        expect(page.locator(".message.user .message-body")).to_have_text(question)
        expect(page.locator(".message.assistant .message-body")).to_have_text(answered(answer_text))
        page.locator(".message.assistant .citation").first.click()
        expect(page.locator("#passage-text")).to_contain_text(XSS)
        assert_inert(page, server)

    with agent.store.session() as session:
        assert session.scalars(select(Feedback.correction)).one() == correction


def test_hostile_topics_contributors_reviewers_and_guard_events_stay_text_in_the_operator_console(browser, home, kb):  # noqa: F811
    settings, agent = hostile_agent(home, kb, f"Press Redeem. {HOSTILE} Or https://evil.example/steal.")
    user = f"mallory {XSS}"
    reviewer = f"op {XSS}"
    keys = {name: create_key(agent.store, name, role) for name, role in ((user, "agent"), (reviewer, "operator"))}
    for n in range(4):
        answered = agent.ask(f"gift card redeem broken {n} {HOSTILE}", user=user, channel="api")
        row = record_feedback(agent.store, answered.interaction_id, "down", user=user,
                              correction=f"Redeem under Settings > Billing > Gift cards. {HOSTILE}")
    review_correction(agent.store, row.id, True, reviewer)
    manifest = synthesize(settings, agent.store, agent.retriever, FakeListChatModel(responses=["1. a question"]),
                          agent.retriever.embeddings.encode, teacher_name="scripted", base_model="m",
                          progress=False).manifest
    assert user in manifest["contributors"]

    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    context.set_default_timeout(30_000)
    console = context.new_page()
    console.log = PageLog(console)
    with LiveServer(create_app(settings, agent=agent)) as server:
        console.goto(server.url + "/operator")
        console.fill("#key-input", keys[reviewer])
        console.click("[data-testid=key-save]")
        expect(console.locator("[data-testid=datasets]")).to_contain_text(f"{user}")
        expect(console.locator("[data-testid=audit]")).to_contain_text(reviewer)
        expect(console.locator("#topics")).to_contain_text("gift card")
        guarded = console.locator("[data-testid=guard-events]")  # the off-policy link, removed; the question as text
        expect(guarded.locator("tbody tr")).to_have_count(4)
        expect(guarded).to_contain_text("https://evil.example/steal")
        expect(guarded).to_contain_text(f"gift card redeem broken 3 {XSS}")
        assert_inert(console, server)
    context.close()
