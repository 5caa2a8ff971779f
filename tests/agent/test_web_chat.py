"""The support agents' web chat page, in a real headless Chromium against the real app served by uvicorn.

Chromium is Debian's package (``scripts/install-browser.sh``), driven by Playwright's Python package; no
browser is downloaded. Set ``AFFINAGE_SCREENSHOT_DIR`` to keep screenshots of the page.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from playwright import sync_api
from sqlalchemy import select

# Installed by `make test` (scripts/install-browser.sh); a missing browser fails these tests rather than skipping them.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

from affinage.core.prompts import QUOTE_LEAD
from affinage.core.settings import load_settings
from affinage.core.chat_model import LocalChatModel
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service.auth import create_key
from affinage.core.tables import Feedback, Interaction
from retrieval.ingest import ingest
from tests.agent.service_harness import LiveServer

expect = sync_api.expect
# what a page shows, not how fast: a streamed answer on a busy machine (`make test` runs two processes) can take
# longer than Playwright's 5 s default, as the pages' own actions may (set_default_timeout below)
expect.set_options(timeout=30_000)
HOSTILE = '<script>window.__pwned=1</script> ![x](http://127.0.0.2:9/x.png) <img src=x onerror="window.__pwned=1">'


# --- a live server and a browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageLog:
    """Every request the page made, and the console errors it logged."""

    def __init__(self, page):
        self.requests: list = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request))
        page.on("console", lambda message: self.console_errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.console_errors.append(f"uncaught: {error}"))

    def unexpected_console_errors(self) -> list[str]:
        # HTTP errors are expected in some tests (and /favicon.ico is not served); anything else is a bug
        return [e for e in self.console_errors if not e.startswith("Failed to load resource")]

    def chat_bodies(self) -> list[dict]:
        return [json.loads(r.post_data) for r in self.requests if urlsplit(r.url).path == "/v1/chat/completions"]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.log = PageLog(page)
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("AFFINAGE_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def sign_in(page, server: LiveServer, key: str) -> None:
    page.goto(server.url + "/")
    page.fill("#key-input", key)
    page.click("#key-save")
    expect(page.locator("#question")).to_be_visible()


def ask(page, question: str) -> None:
    page.fill("#question", question)
    page.click("#send")


def answered(text: str) -> re.Pattern:
    """A message body holding the model's ``text`` and then the quoted knowledge-base sentences."""
    return re.compile("^" + re.escape(text) + r"\s+" + re.escape(QUOTE_LEAD) + " \u201c")


def wait_for_answer(page, count: int):
    """The ``count``-th assistant message, once its answer has finished streaming."""
    answer = page.locator(".message.assistant").nth(count - 1)
    expect(answer.locator(".feedback")).to_be_attached()
    expect(page.locator("#send")).to_be_enabled()
    return answer


# --- the real (tiny) model -------------------------------------------------------------------------------------

class SlowChatModel(LocalChatModel):
    """The real local model, with a pause between streamed pieces so the page's streaming can be watched."""

    def _stream(self, *args, **kwargs):
        for piece in super()._stream(*args, **kwargs):
            time.sleep(0.05)
            yield piece


def test_streamed_answer_citation_and_correction_reach_the_database(page, tiny_settings, tiny_model_dir, kb, embeddings):
    settings = tiny_settings
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    # Sampling: greedy decoding of the random tiny LM picks a special token every time, which decodes to "".
    llm = SlowChatModel.from_pretrained(tiny_model_dir, max_new_tokens=24, temperature=1.0)
    agent = build_agent(settings, llm=llm, embeddings=embeddings)
    key = create_key(agent.store, "alice", "agent")

    with LiveServer(create_app(settings, agent=agent)) as server:
        sign_in(page, server, key)
        # Record every length the answer goes through while it streams.
        page.evaluate("""() => {
            window.__lengths = [];
            new MutationObserver(() => {
                const body = document.querySelector('.message.assistant .message-body');
                if (body) window.__lengths.push(body.textContent.length);
            }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
        }""")
        ask(page, "How long is the password reset link valid?")
        expect(page.locator(".message.user .message-body")).to_have_text("How long is the password reset link valid?")
        answer = wait_for_answer(page, 1)

        text = answer.locator(".message-body").text_content()
        assert text.strip()
        lengths = [n for n in page.evaluate("window.__lengths") if n > 0]
        assert len(set(lengths)) >= 2, f"the answer did not stream: lengths seen {lengths}"
        with agent.store.session() as session:
            interaction = session.scalars(select(Interaction)).one()
        assert interaction.answer == text
        assert (interaction.channel, interaction.user) == ("api", "alice")

        citations = answer.locator(".citation")
        expect(citations.first).to_have_text("account/passwords.md#reset-your-password")
        screenshot(page, "chat-real-model.png")
        citations.first.click()
        panel = page.locator("#passage-panel")
        expect(panel).to_be_visible()
        expect(panel).to_contain_text("account/passwords.md#reset-your-password")
        expect(panel.locator("#passage-text")).to_contain_text("the reset link expires after 2 hours")
        page.click("#passage-close")
        expect(panel).to_be_hidden()

        answer.locator(".thumb-down").click()
        correction = answer.locator(".correction")
        expect(correction).to_be_visible()
        correction.fill("The reset link is valid for 2 hours. [account/passwords.md#reset-your-password]")
        answer.locator(".comment").fill("it should quote the 2 hours")
        answer.locator(".feedback-submit").click()
        expect(answer.locator(".feedback-status")).to_have_text("Thanks — feedback saved")

    with agent.store.session() as session:
        rows = session.scalars(select(Feedback)).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.interaction_id, row.rating, row.user) == (interaction.id, "down", "alice")
    assert row.correction == "The reset link is valid for 2 hours. [account/passwords.md#reset-your-password]"
    assert row.comment == "it should quote the 2 hours"
    assert page.log.unexpected_console_errors() == []


# --- a fake model: hostile output, conversations, errors -------------------------------------------------------

@pytest.fixture
def fake_settings(home):
    return load_settings(home, rate_limit_per_minute=2, max_message_chars=400)  # room for an answer's quotes


def fake_agent(settings, kb, embeddings, responses: list[str]):
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    llm = FakeListChatModel(responses=responses, sleep=0.003)
    return build_agent(settings, llm=llm, embeddings=embeddings)


def test_hostile_answer_and_passage_render_as_text(page, fake_settings, kb, embeddings):
    (kb / "billing" / "gift-cards.md").write_text(
        "# Gift cards\n\n## Redeem a gift card\n\nRedeem gift cards under Settings > Billing > Gift cards. "
        f"{HOSTILE}\n"
    )
    answer_text = f"Redeem it under Settings > Billing > Gift cards. {HOSTILE} [billing/gift-cards.md#redeem-a-gift-card]"
    agent = fake_agent(fake_settings, kb, embeddings, [answer_text])
    key = create_key(agent.store, "bob", "agent")

    with LiveServer(create_app(fake_settings, agent=agent)) as server:
        sign_in(page, server, key)
        ask(page, "How do I redeem a gift card?")
        answer = wait_for_answer(page, 1)
        expect(answer.locator(".message-body")).to_have_text(answered(answer_text))

        citation = answer.locator(".citation", has_text="billing/gift-cards.md#redeem-a-gift-card")
        citation.click()
        passage = page.locator("#passage-text")
        expect(passage).to_be_visible()
        expect(passage).to_contain_text(HOSTILE)
        screenshot(page, "chat-hostile-passage.png")
        page.wait_for_timeout(500)  # time for anything that was (wrongly) injected to load or run

        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("img, script:not([src])").count() == 0
        outside = [r.url for r in page.log.requests if urlsplit(r.url).netloc != f"127.0.0.1:{server.port}"]
        assert outside == []
        paths = {urlsplit(r.url).path for r in page.log.requests}
        assert paths <= {"/", "/static/chat.js", "/static/chat.css", "/v1/models", "/v1/chat/completions", "/favicon.ico"}
    assert page.log.unexpected_console_errors() == []


def test_follow_ups_send_history_which_survives_reload_and_errors_are_shown(page, fake_settings, kb, embeddings):
    answers = [
        "Annual plans are refundable within 30 days of purchase: open Settings > Billing and press Request refund. "
        "[billing/refunds.md#annual-plan-refunds]",
        "No: monthly plans are not refunded, only annual plans within 30 days. [billing/refunds.md#monthly-plans]",
    ]
    agent = fake_agent(fake_settings, kb, embeddings, answers)
    key = create_key(agent.store, "carol", "agent")

    with LiveServer(create_app(fake_settings, agent=agent)) as server:
        # A wrong key is refused when it is saved...
        page.goto(server.url + "/")
        page.fill("#key-input", "afk_not-a-key")
        page.click("#key-save")
        expect(page.locator("#key-error")).to_contain_text("invalid API key")
        expect(page.locator("#question")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('affinage-key')") is None
        # ...and one that stops working later gets the server's message on the next question; signing out
        # lets the agent paste another, and the question is kept for a retry.
        page.fill("#key-input", key)
        page.click("#key-save")
        expect(page.locator("#question")).to_be_visible()
        page.evaluate("sessionStorage.setItem('affinage-key', 'afk_revoked')")
        ask(page, "Can I get a refund on an annual plan?")
        expect(page.locator("#error")).to_contain_text("invalid API key")
        expect(page.locator(".message")).to_have_count(0)
        expect(page.locator("#question")).to_have_value("Can I get a refund on an annual plan?")
        page.click("#sign-out")
        expect(page.locator("#key-input")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('affinage-key')") is None
        page.fill("#key-input", key)
        page.click("#key-save")
        expect(page.locator("#question")).to_be_visible()  # the key is saved once the server accepted it
        assert page.evaluate("sessionStorage.getItem('affinage-key')") == key

        page.click("#send")
        first = wait_for_answer(page, 1)
        expect(first.locator(".message-body")).to_have_text(answered(answers[0]))
        expect(page.locator("#error")).to_be_hidden()
        ask(page, "What about monthly plans?")
        wait_for_answer(page, 2)
        bodies = page.log.chat_bodies()
        conversation = bodies[0]["conversation_id"]  # one id for the conversation's turns (and a canary's arm)
        shown = bodies[-1]["messages"][1]["content"]  # the answer as shown, quotes included
        assert answered(answers[0]).match(shown)
        assert len(conversation) == 32 and bodies[-1] == {"model": "default", "stream": True, "messages": [
            {"role": "user", "content": "Can I get a refund on an annual plan?"},
            {"role": "assistant", "content": shown},
            {"role": "user", "content": "What about monthly plans?"},
        ], "conversation_id": conversation}
        screenshot(page, "chat.png")
        page.locator(".message.assistant").nth(1).locator(".thumb-down").click()
        screenshot(page, "chat-feedback.png")

        # A reload keeps the conversation, its citations and its feedback buttons.
        page.reload()
        expect(page.locator(".message.assistant")).to_have_count(2)
        expect(page.locator(".message.assistant").nth(1).locator(".message-body")).to_have_text(answered(answers[1]))
        history = json.loads(page.evaluate("sessionStorage.getItem('affinage-history')"))
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        restored = page.locator(".message.assistant").first
        expect(restored.locator(".citation").first).to_have_text("billing/refunds.md#annual-plan-refunds")
        restored.locator(".thumb-up").click()
        expect(restored.locator(".feedback-status")).to_have_text("Thanks — feedback saved")

        # Server-side refusals show their message: too long, then rate-limited (2 a minute) with Retry-After.
        ask(page, "x" * 401)
        expect(page.locator("#error")).to_contain_text("the limit is 400")
        ask(page, "And for a refund to a different card?")
        expect(page.locator("#error")).to_contain_text("rate limit of 2 requests per minute exceeded")
        expect(page.locator("#error")).to_contain_text("try again in")
        expect(page.locator(".message.assistant")).to_have_count(2)

        page.click("#new-conversation")
        expect(page.locator(".message")).to_have_count(0)
        assert page.evaluate("sessionStorage.getItem('affinage-history')") is None
        assert page.evaluate("sessionStorage.getItem('affinage-conversation')") is None  # a new one next time

    with agent.store.session() as session:
        interactions = session.scalars(select(Interaction).order_by(Interaction.created_at)).all()
        ratings = [(f.interaction_id, f.rating, f.user) for f in session.scalars(select(Feedback))]
    assert len(interactions) == 2 and {i.conversation_id for i in interactions} == {conversation}
    assert ratings == [(interactions[0].id, "up", "carol")]
    assert page.log.unexpected_console_errors() == []


def test_the_customer_id_goes_with_each_question_as_openai_user(page, fake_settings, kb, embeddings):
    """The Customer ID field is sent as OpenAI's ``user`` (what an erasure by customer finds), survives a reload and is
    cleared with the conversation; left empty, the body has no ``user``."""
    answers = ["Annual plans are refundable within 30 days. [billing/refunds.md#annual-plan-refunds]"]
    agent = fake_agent(fake_settings.model_copy(update={"rate_limit_per_minute": 60}), kb, embeddings, answers)
    key = create_key(agent.store, "erin", "agent")

    with LiveServer(create_app(fake_settings.model_copy(update={"rate_limit_per_minute": 60}), agent=agent)) as server:
        sign_in(page, server, key)
        page.fill("#customer", "  cust-erin-5 ")
        ask(page, "Can I get a refund on an annual plan?")
        wait_for_answer(page, 1)
        assert page.log.chat_bodies()[-1]["user"] == "cust-erin-5"
        page.reload()
        expect(page.locator("#customer")).to_have_value("cust-erin-5")
        page.click("#new-conversation")
        expect(page.locator("#customer")).to_have_value("")
        ask(page, "What about monthly plans?")
        wait_for_answer(page, 1)
        assert "user" not in page.log.chat_bodies()[-1]
    assert page.log.unexpected_console_errors() == []
