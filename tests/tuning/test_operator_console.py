"""The operator console in a real headless Chromium: reports, decisions with comments, roles, promotion,
rollback and the audit log, with hostile text shown as text."""

from __future__ import annotations

from urllib.parse import urlsplit

from affinage.factory import build_agent
from affinage.service import create_app
from agent.service.auth import create_key
from retrieval.ingest import ingest
from tests.agent.service_harness import LiveServer
from tests.agent.test_web_chat import PageLog, browser, expect, screenshot  # noqa: F401 - fixtures
from tuning import jobs
from tuning.checks import no_worse, not_higher
from tuning.registry import Registry
from tuning.report import write_report
from tuning.train import train

HOSTILE = '<img src=x onerror="window.__pwned=1">'


def gated_versions(settings, quick_config) -> tuple[str, str]:
    registry = Registry.open(settings)
    good = train(settings, "sft", config_path=quick_config(), progress=False)
    write_report(good.path, good.manifest, [no_worse("regression", "golden token_f1", 0.4, 0.45, 0.02)])
    registry.record_gate(good.id, True, {"report": "report.html", "failed": []})
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(b"x")
    bad = registry.add(staged, {"id": "sft-hostile", "method": "sft", "kind": "lora", "created_at": "2026-01-01",
                                "datasets": [{"id": "ds-1"}], "metrics": {}})
    checks = [not_higher("safety", HOSTILE, 0.0, 0.5)]
    write_report(bad.path, bad.manifest, checks)
    registry.record_gate(bad.id, False, {"report": "report.html", "failed": [f"safety: {HOSTILE}"]})
    return good.id, bad.id


def test_operator_reviews_approves_promotes_and_rolls_back(browser, tiny_settings, dataset, quick_config, kb,  # noqa: F811
                                                          embeddings):
    settings = tiny_settings.model_copy(update={"registry_poll_seconds": 3600})  # the console, not serving, is tested
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    good, bad = gated_versions(settings, quick_config)
    agent = build_agent(settings, embeddings=embeddings)
    keys = {role: create_key(agent.store, f"test-{role}", role) for role in ("agent", "operator", "admin")}
    job = jobs.enqueue(agent.store, "cycle", "20 new failures", max_attempts=3)
    jobs.log(agent.store, job.id, HOSTILE)

    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    log = PageLog(page)
    with LiveServer(create_app(settings, agent=agent)) as server:
        page.goto(server.url + "/operator")
        page.fill("#key-input", keys["agent"])
        page.click("[data-testid=key-save]")
        expect(page.locator("#notice")).to_contain_text("needs the operator role")
        expect(page.locator("#key-input")).to_be_visible()

        page.fill("#key-input", keys["operator"])
        page.click("[data-testid=key-save]")
        expect(page.locator("#active-version")).to_have_text("active: base")
        expect(page.locator(f"[data-testid='version-{good}'] .state")).to_have_text("gated-passed")
        expect(page.locator("[data-testid='version-sft-hostile']")).to_contain_text(f"failed: safety: {HOSTILE}")
        expect(page.locator("[data-testid=datasets]")).to_contain_text(dataset["id"])
        expect(page.locator(f"[data-testid='job-{job.id}']")).to_contain_text("queued")
        page.click(f"[data-testid='job-log-{job.id}']")
        expect(page.locator("[data-testid=job-log]")).to_contain_text(HOSTILE)

        page.click(f"[data-testid='report-{bad}']")  # the report renders, plots included, in its sandboxed frame
        frame = page.frame_locator("#report-frame")
        expect(frame.locator("h1")).to_have_text(f"Gate report: {bad}")
        expect(frame.locator("td").filter(has_text="<img src=x")).to_have_count(1)
        assert frame.locator("img").first.evaluate("img => img.complete && img.naturalWidth > 0")

        page.click(f"[data-testid='approve-{good}']")  # no comment: refused in the page
        expect(page.locator("#notice")).to_have_text("A decision needs a comment saying why.")
        page.fill(f"[data-testid='comment-{bad}']", "gates failed on safety")
        page.fill(f"[data-testid='override-{bad}']", "I know better")
        page.click(f"[data-testid='approve-{bad}']")
        expect(page.locator("#notice")).to_contain_text("needs the admin role")
        expect(page.locator(f"[data-testid='version-{bad}'] .state")).to_have_text("gated-failed")

        page.fill(f"[data-testid='comment-{good}']", "better on billing questions")
        page.click(f"[data-testid='approve-{good}']")
        expect(page.locator(f"[data-testid='version-{good}'] .state")).to_have_text("approved")
        page.click(f"[data-testid='promote-{good}']")
        expect(page.locator("#active-version")).to_have_text(f"active: {good}")
        expect(page.locator(f"[data-testid='version-{good}'] .state")).to_have_text("active")
        page.click("[data-testid=rollback]")
        expect(page.locator("#active-version")).to_have_text("active: base")

        audit = page.locator("[data-testid=audit]")
        for action in ("rolled_back", "promoted", "approved", "gated", "registered"):
            expect(audit).to_contain_text(action)
        expect(audit).to_contain_text("comment: better on billing questions")
        expect(audit.locator("tr").filter(has_text="promoted")).to_contain_text("test-operator")
        screenshot(page, "operator-console.png")

        # an admin may approve a failed candidate, with the written reason in the log
        page.click("[data-testid=sign-out]")
        page.fill("#key-input", keys["admin"])
        page.click("[data-testid=key-save]")
        expect(page.locator(f"[data-testid='comment-{bad}']")).to_be_visible()
        page.fill(f"[data-testid='comment-{bad}']", "hotfix for an outage")
        page.fill(f"[data-testid='override-{bad}']", "safety probe checked by hand")
        page.click(f"[data-testid='approve-{bad}']")
        expect(page.locator(f"[data-testid='version-{bad}'] .state")).to_have_text("approved")
        expect(audit).to_contain_text("override_reason: safety probe checked by hand")

        assert page.evaluate("window.__pwned") is None
        assert not log.unexpected_console_errors()
        assert all(urlsplit(r.url).netloc in ("", urlsplit(server.url).netloc) for r in log.requests
                   if not r.url.startswith(("data:", "about:")))
    context.close()
