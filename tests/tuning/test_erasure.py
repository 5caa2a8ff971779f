"""Erasure in the registry: versions trained on erased data are flagged (never swapped), their reports scrubbed, and
a retrain is queued when the settings ask for one."""

import json

import pytest

from affinage.cli import main
from affinage.core.settings import load_settings
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service.auth import create_key
from affinage.core.tables import Job
from affinage.core.store import Store
from retrieval.ingest import ingest
from affinage.core.datasets import write_dataset
from synth_data.erasure import supersede_datasets
from tests.agent.service_harness import LiveServer
from tests.agent.test_web_chat import browser, expect  # noqa: F401 - fixtures
from affinage import search
from affinage.core.timeutil import utcnow
from tuning import jobs
from tuning.checks import improves
from affinage.retrain import follow_up
from tuning.registry import Registry
from tuning.report import write_report

QUOTE = "Why was my card 4111 charged twice, asks Zoë Quint"


@pytest.fixture
def settings(home, db_url):
    return load_settings(home, database_url=db_url)


@pytest.fixture
def store(settings):
    store = Store(settings.db_url)
    yield store
    store.close()


def add(registry: Registry, version_id: str, dataset: str, start_from: str = "base") -> str:
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(version_id.encode())
    registry.add(staged, {"id": version_id, "method": "sft", "kind": "lora", "created_at": version_id,
                          "start_from": start_from, "datasets": [{"id": dataset}], "metrics": {}})
    return version_id


def active(registry: Registry, version_id: str) -> None:
    registry.record_gate(version_id, True, {"report": "report.html"})
    registry.promote(version_id, actor="op")


def test_flagging_marks_the_versions_trained_on_erased_data_once_and_swaps_nothing(settings, store):
    registry = Registry.open(settings, store)
    a, b = add(registry, "v1", "ds-1"), add(registry, "v2", "ds-2", start_from="v1")  # v2 continued v1's adapter
    c, d = add(registry, "v3", "ds-3"), add(registry, "v4", "ds-3")
    active(registry, b)
    pointer = registry.pointer_state()

    assert registry.flag_trained_on_erased(["ds-1"], "er-1", actor="admin") == [a, b]
    flag = registry.get(a).trained_on_erased
    assert flag["datasets"] == ["ds-1"] and flag["erasure"] == "er-1" and flag["at"]
    assert registry.get(b).trained_on_erased["via"] == a  # its weights started from v1's
    assert registry.get(c).trained_on_erased is None and registry.get(c).to_json()["trained_on_erased_data"] is False
    assert registry.get(b).to_json()["trained_on_erased_data"] is True
    assert registry.pointer_state() == pointer and registry.get(b).state == "active"  # still serving
    flagged = [(e["version"], e["actor"], e["erasure"]) for e in registry.events() if e["action"] == "flagged"]
    assert flagged == [(a, "admin", "er-1"), (b, "admin", "er-1")]

    assert registry.flag_trained_on_erased(["ds-1"], "er-1", actor="admin") == [a, b]  # a rerun
    assert len([e for e in registry.events() if e["action"] == "flagged"]) == 2
    assert registry.get(a).trained_on_erased == flag

    assert registry.flag_trained_on_erased(["ds-3", "ds-9"], "er-2", actor="admin") == [c, d]
    assert registry.flag_trained_on_erased(["ds-1", "ds-2"], "er-2", actor="admin") == [a, b]
    assert registry.get(b).trained_on_erased["datasets"] == ["ds-1", "ds-2"]
    assert registry.get(b).trained_on_erased["erasures"] == ["er-1", "er-2"]
    assert len([e for e in registry.events() if e["action"] == "flagged"]) == 6
    assert registry.pointer_state() == pointer


def test_flagging_scrubs_erased_text_from_gate_reports_and_verdicts(settings, store):
    registry = Registry.open(settings, store)
    version = registry.get(add(registry, "v1", "ds-1"))
    checks = [improves("regression", "target token_f1", 0.5, 0.6, 0.05)]
    write_report(version.path, version.manifest, checks, {"examples": [
        {"question": QUOTE.upper(), "reference": "r", "active": "a", "candidate": f"You said: {QUOTE}"}]})
    registry.record_gate(version.id, True, {"report": "report.html", "failed": [f"note: {QUOTE}"]})
    at = registry.get(version.id).gate["at"]

    registry.flag_trained_on_erased(["ds-1"], "er-1", actor="admin", erased_texts=[QUOTE])
    page = (version.path / "report.html").read_text(encoding="utf-8")
    assert QUOTE.lower() not in page.lower() and "[erased]" in page and "Gate report: v1" in page
    report = json.loads((version.path / "report.json").read_text())
    assert report["examples"][0]["candidate"] == "You said: [erased]" and report["checks"] == [checks[0].to_json()]
    gate = registry.get(version.id).gate
    assert gate["failed"] == ["note: [erased]"] and gate["at"] == at
    registry.verify(version.id)  # reports are not part of the hashed weights
    assert len([e for e in registry.events() if e["action"] == "flagged"]) == 1


@pytest.fixture
def erased(settings, store):
    """A version trained on a dataset that an erasure then superseded, flagged; returns (registry, ids, new id)."""
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    old = write_dataset(settings.datasets_dir, {"sft": [row, row]}, {"base_model": "m", "teacher": "t",
                                                                       "source_interaction_ids": ["i1", "i2"]},
                        {"sft": ["i1", "i2"], "contributors": {"i1": "ann", "i2": "bob"}})
    [done] = supersede_datasets(settings.datasets_dir, {"i1"}, None)
    registry = Registry.open(settings, store)
    version = add(registry, "v1", old["id"])
    active(registry, version)
    flagged = registry.flag_trained_on_erased([old["id"]], "er-1", actor="admin")
    return registry, flagged, done["new"]


def test_the_report_follow_up_queues_nothing(settings, store, erased):
    registry, flagged, _ = erased
    assert settings.erasure_followup == "report"
    assert follow_up(settings, store, flagged, actor="admin") is None
    assert jobs.recent(store) == []


def test_affinage_models_says_which_versions_learnt_from_erased_data(settings, erased, capsys, monkeypatch):
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", settings.db_url)
    assert main(["--home", str(settings.home), "models"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("v1 ")]
    assert line.endswith("trained on erased data") and "active" in line
    assert main(["--home", str(settings.home), "models", "--json"]) == 0
    [version] = json.loads(capsys.readouterr().out)["versions"]
    assert version["trained_on_erased_data"] and version["flags"]["trained_on_erased_data"]["erasure"] == "er-1"


def test_the_retrain_follow_up_queues_one_job_on_the_cleaned_data(settings, store, erased, monkeypatch):
    registry, flagged, new = erased
    settings = settings.model_copy(update={"erasure_followup": "retrain"})
    job_id = follow_up(settings, store, flagged, actor="admin")
    job = jobs.get(store, job_id)
    assert (job.kind, job.state, job.trigger) == ("retrain", "queued", "retrain after erasure er-1")
    assert job.outputs["synth"] == {"dataset": new, "retrain_after_erasure": "er-1"}
    assert {"triage", "remedies"} <= set(job.outputs) and "train" not in job.outputs  # the worker trains next
    assert follow_up(settings, store, flagged, actor="admin") == job_id  # a rerun queues nothing more
    assert registry.active_id() == "v1" and not jobs.busy(store, "cycle")  # cycles are not blocked
    with store.session() as session:
        assert session.query(Job).count() == 1

    # the search stage: the cleaned dataset, and the base model under it since the active version is flagged
    seen = {}

    def train(settings, method, dataset_id, config, progress=True):
        seen.update(dataset=dataset_id, config=json.loads(config.read_text()))
        raise RuntimeError("stop before training")

    monkeypatch.setattr(search, "train", train)  # the name the search stage calls
    notes = []
    with pytest.raises(RuntimeError, match="stop before training"):
        search.search_stage(settings, job.outputs["synth"]["dataset"], utcnow().isoformat(), notes.append, False)
    assert seen["dataset"] == new and seen["config"]["start_from"] == "base"
    assert any("trained on erased data" in n for n in notes)


def test_the_console_marks_a_version_trained_on_erased_data(browser, tiny_settings, kb, embeddings):  # noqa: F811
    settings = tiny_settings.model_copy(update={"registry_poll_seconds": 3600})
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    registry = Registry.open(settings)
    flagged, clean = add(registry, "v1", "ds-1"), add(registry, "v2", "ds-2")
    registry.flag_trained_on_erased(["ds-1"], "er-1", actor="admin")
    agent = build_agent(settings, embeddings=embeddings)
    key = create_key(agent.store, "test-operator", "operator")
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    with LiveServer(create_app(settings, agent=agent)) as server:
        page.goto(server.url + "/operator")
        page.fill("#key-input", key)
        page.click("[data-testid=key-save]")
        expect(page.locator(f"[data-testid='version-{flagged}'] .state")).to_contain_text("trained on erased data")
        expect(page.locator(f"[data-testid='erased-{flagged}']")).to_have_text("trained on erased data")
        expect(page.locator(f"[data-testid='version-{clean}']")).to_be_visible()
        expect(page.locator(f"[data-testid='erased-{clean}']")).to_have_count(0)
    context.close()
