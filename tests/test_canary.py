"""Canary promotion, composed: the worker's look at a running canary rolls a worse arm back (rejecting its version,
with the figures in the audit log), steps an equal one up and promotes it once no harm is shown at the final share;
the status the console and CLI show; the operator routes (roles, refusals as 4xx); the CLI."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage import canary
from affinage.cli import main
from affinage.core.canary_split import arm_for
from affinage.core.datasets import write_dataset
from affinage.core.settings import load_settings
from affinage.core.store import Store
from affinage.core.tables import Interaction
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service.auth import create_key
from tests.agent.light_server import HashEmbeddings
from tests.agent.service_harness import LiveServer
from tests.agent.test_web_chat import PageLog, browser, expect  # noqa: F401 - fixtures
from tests.tuning.conftest import rows
from tests.tuning.test_registry import add_version
from tuning import canary as moves
from tuning.registry import Registry


@pytest.fixture
def workspace(tmp_path, db_url):
    settings = load_settings(tmp_path / "home", database_url=db_url, canary_min_conversations=60)
    store = Store(settings.db_url)
    registry = Registry.open(settings, store)
    for version in ("old", "new"):
        add_version(registry, version)
        registry.record_gate(version, True, {"report": "report.html"})
        registry.decide(version, True, actor="op", comment="good")
    registry.promote("old", actor="op")
    yield settings, store, registry
    store.close()


def traffic(store: Store, canary_state: dict, conversations: int, bad_rate: dict[str, float], seed: int = 0) -> None:
    """``conversations`` one-turn conversations assigned as serving assigns them; thumbs-down at each arm's rate."""
    rng = random.Random(seed)
    with store.session() as session:
        for i in range(conversations):
            conversation = f"c{seed}-{i}"
            arm = arm_for(conversation, canary_state)
            down = rng.random() < bad_rate[arm]
            session.add(Interaction(question="q", answer="a", prompt_version="p", model_version="m", latency_s=0.1,
                                    conversation_id=conversation, arm=arm,
                                    signals=[{"kind": "thumbs_down", "reason": "", "strength": 1.0}] if down else []))


def test_a_worse_canary_is_rolled_back_and_its_version_rejected_with_the_figures(workspace):
    settings, store, registry = workspace
    started = moves.start(registry, "new", 50, actor="op")
    traffic(store, started, 400, {"active": 0.05, "canary": 0.40})

    found = canary.check(settings, store, registry)
    assert found["action"] == "rollback" and "thumbs_down" in found["reason"]
    assert moves.current(registry) is None and registry.active_id() == "old"
    version = registry.get("new")
    assert version.state == "rejected" and version.flags["canary"]["reason"] == found["reason"]
    event = registry.events()[-1]
    assert (event["action"], event["actor"]) == ("canary_rolled_back", canary.POLICY)
    assert event["figures"]["signals"]["thumbs_down"]["worse"] is True
    assert canary.status(settings, store, registry)["last"]["action"] == "canary_rolled_back"


def test_an_equal_canary_steps_up_then_needs_evidence_at_the_final_share_then_becomes_active(workspace):
    settings, store, registry = workspace
    started = moves.start(registry, "new", 10, actor="op")
    assert canary.check(settings, store, registry)["action"] == "wait"  # nobody talked to it yet
    traffic(store, started, 1500, {"active": 0.0, "canary": 0.0}, seed=1)
    assert canary.check(settings, store, registry)["action"] == "advance"
    assert moves.current(registry)["share"] == 50

    found = canary.check(settings, store, registry)  # no harm so far, but nothing yet at 50%
    assert found["action"] == "wait" and "at 50%" in found["reason"]
    traffic(store, moves.current(registry), 300, {"active": 0.0, "canary": 0.0}, seed=2)
    assert canary.check(settings, store, registry)["action"] == "promote"
    assert registry.active_id() == "new" and moves.current(registry) is None
    assert registry.events()[-1]["via"] == "canary"


def test_without_auto_advance_only_harm_moves_the_canary(workspace):
    settings, store, registry = workspace
    settings = settings.model_copy(update={"canary_auto_advance": False})
    started = moves.start(registry, "new", 10, actor="op")
    traffic(store, started, 1500, {"active": 0.0, "canary": 0.0}, seed=3)
    assert canary.check(settings, store, registry)["action"] == "advance"
    assert moves.current(registry)["share"] == 10


def test_status_shows_arms_intervals_and_the_path_and_two_replicas_agree(workspace):
    settings, store, registry = workspace
    started = moves.start(registry, "new", 50, actor="op")
    traffic(store, started, 200, {"active": 0.1, "canary": 0.1}, seed=4)
    shown = canary.status(settings, store, registry)
    assert shown["canary"]["version"] == "new" and shown["active"] == "old"
    figures = shown["decision"]["signals"]["thumbs_down"]
    assert figures["active_conversations"] + figures["canary_conversations"] == 200
    assert figures["low"] <= figures["diff"] <= figures["high"]
    assert shown["trajectory"][-1]["conversations"] == 200 and len(shown["trajectory"]) <= 100
    other = Registry.open(settings, Store(settings.db_url))  # a second replica reads the same pointer row
    assert moves.current(other) == started
    assert all(arm_for(f"c{i}", moves.current(other)) == arm_for(f"c{i}", started) for i in range(100))


def test_the_operator_routes_drive_the_canary_and_refuse_what_cannot_be(workspace):
    settings, store, registry = workspace
    agent = build_agent(settings, llm=FakeListChatModel(responses=["ok"]), embeddings=HashEmbeddings(), store=store)
    keys = {role: create_key(store, role, role) for role in ("agent", "operator")}
    with TestClient(create_app(settings, agent=agent)) as client:
        def post(path, body, role="operator"):
            return client.post("/api/operator/canary" + path, json=body,
                               headers={"Authorization": f"Bearer {keys[role]}"})

        assert post("", {"version": "new", "share": 10}, role="agent").status_code == 403
        for share in (0, 100, 150):
            refused = post("", {"version": "new", "share": share})
            assert refused.status_code == 400 and "share" in refused.json()["error"]["param"]
        refused = post("", {"version": "old", "share": 10})
        assert refused.status_code == 409 and "already active" in refused.json()["error"]["message"]
        assert post("", {"version": "new", "share": 10}).json()["canary"]["share"] == 10
        assert post("", {"version": "new", "share": 20}).status_code == 409  # one canary at a time
        assert post("/advance", {}).json()["canary"]["share"] == 50  # the next configured step
        assert post("/stop", {"comment": ""}).status_code == 400
        assert post("/rollback", {"comment": "agents complain"}).json()["canary"] is None
        assert registry.get("new").state == "rejected"
        assert post("/advance", {}).status_code == 409
        status = client.get("/api/operator/canary", headers={"Authorization": f"Bearer {keys['operator']}"}).json()
        assert status["last"]["action"] == "canary_rolled_back" and status["last"]["reason"] == "agents complain"


def test_the_cli_starts_steps_and_stops_a_canary(workspace, capsys, monkeypatch):
    settings, store, registry = workspace
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", settings.db_url)
    home = ["--home", str(settings.home)]
    assert main([*home, "promote", "new", "--canary", "10"]) == 0
    assert "10% of new conversations" in capsys.readouterr().out
    assert main([*home, "canary", "advance"]) == 0 and moves.current(registry)["share"] == 50
    assert main([*home, "canary", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["canary"]["share"] == 50
    assert main([*home, "canary", "stop"]) == 1
    assert "needs a comment" in capsys.readouterr().err
    assert main([*home, "canary", "stop", "--comment", "later"]) == 0
    assert "no canary running" in capsys.readouterr().out and registry.get("new").state == "approved"
    assert main([*home, "promote", "new", "--canary", "100"]) == 1
    assert "1 to 99 percent" in capsys.readouterr().err


def test_the_console_shows_and_drives_a_canary(workspace, browser):  # noqa: F811 - the Chromium fixture
    settings, store, registry = workspace
    settings = settings.model_copy(update={"registry_poll_seconds": 3600})  # the console, not serving, is tested
    agent = build_agent(settings, llm=FakeListChatModel(responses=["ok"]), embeddings=HashEmbeddings(), store=store)
    operator = create_key(store, "op", "operator")
    cap = {"share": 0.25, "floor": 20, "failures": 120, "cap": 25,
           "users": {"ann": {"failures": 40, "kept": 25, "dropped": 15, "rows_dropped": {"sft": 45}}}}
    write_dataset(settings.datasets_dir, rows(), {"base_model": "m", "teacher": "t", "filters": {"per_user_cap": cap}})
    page = browser.new_context(viewport={"width": 1200, "height": 1000}).new_page()
    page.set_default_timeout(30_000)
    log = PageLog(page)
    with LiveServer(create_app(settings, agent=agent)) as server:
        page.goto(server.url + "/operator")
        page.fill("#key-input", operator)
        page.click("[data-testid=key-save]")
        expect(page.locator("[data-testid=canary-state]")).to_contain_text("No canary running; old serves")
        expect(page.locator("[data-testid=datasets]")).to_contain_text("25 failures a user: ann kept 25 of 40, "
                                                                        "dropped 15")  # the per-user cap, said
        page.click("[data-testid='canary-start-new']")
        expect(page.locator("[data-testid=canary-state]")).to_contain_text("new serves 10% of new conversations")

        traffic(store, moves.current(registry), 2000, {"active": 0.05, "canary": 0.35}, seed=5)
        page.click("[data-testid=canary-advance]")  # by hand, whatever the test says
        expect(page.locator("[data-testid=canary-state]")).to_contain_text("new serves 50%")
        row = page.locator("[data-testid='canary-signal-thumbs_down']")
        expect(row).to_contain_text("worse: roll back")
        assert page.locator("#canary-plot polyline").count() == 3  # the interval's bounds and the difference

        page.click("[data-testid=canary-rollback]")
        expect(page.locator("#notice")).to_have_text("Say why in the comment first.")
        page.fill("[data-testid=canary-comment]", "<b>agents complain</b>")
        page.click("[data-testid=canary-rollback]")
        expect(page.locator("[data-testid=canary-state]")).to_contain_text(
            "Last: canary_rolled_back of new by op")
        expect(page.locator("[data-testid=canary-state]")).to_contain_text("<b>agents complain</b>")  # as text
        expect(page.locator("[data-testid='version-new'] .state")).to_have_text("rejected")
        assert log.unexpected_console_errors() == []


@pytest.mark.parametrize("share", [1, 10, 50, 99])
def test_the_hash_puts_a_stable_share_near_the_setting_on_the_canary(share):
    state = {"version": "v-7", "share": share}
    arms = [arm_for(f"conversation-{i}", state) for i in range(20_000)]
    assert arms == [arm_for(f"conversation-{i}", state) for i in range(20_000)]  # one conversation, one arm
    on_canary = arms.count("canary") / len(arms) * 100
    assert abs(on_canary - share) < 4 * (share * (100 - share) / len(arms)) ** 0.5  # within 4 standard errors
    wider = [arm_for(f"conversation-{i}", {**state, "share": min(99, share + 30)}) for i in range(20_000)]
    assert all(w == "canary" for a, w in zip(arms, wider) if a == "canary")  # stepping up keeps its conversations
    assert arm_for("c", None) is None
