"""The candidate search: the space checked before any training, and the search stage with training and gates
replaced by fakes whose figures are set here (the tiny model runs a real search in tests/tuning/test_worker.py):
K candidates registered, the best passing one proposed, the rest superseded, and a resumed search that trains and
gates nothing twice."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

import affinage.search as search
from affinage.core.settings import load_settings
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service.auth import create_key
from affinage.core.timeutil import utcnow
from retrieval.ingest import ingest
from tests.agent.service_harness import LiveServer
from tests.agent.test_web_chat import browser, expect  # noqa: F401 - fixtures
from tuning.checks import improves, not_higher
from tuning.config import RunConfig, load_config
from tuning.registry import Registry
from tuning.report import write_report
from tuning.search import (DEFAULT_SPACE, field_value, held_out_gain, parse_space, read_space, recipe,
                           starting_point)

# learning rate -> (held-out gain, passes the safety gate)
OUTCOMES = {1e-3: (0.02, True), 2e-3: (0.05, True), 4e-3: (0.08, False)}


def space(tmp_path, text: str, name: str = "space.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def settings(tmp_path):
    run = space(tmp_path, "max_steps = 4\nlearning_rate = 1e-3\n", "run.toml")
    lrs = space(tmp_path, "learning_rate = {choices = [1e-3, 2e-3, 4e-3]}\n")
    return load_settings(tmp_path / "home", worker_train_config=run, search_space=lrs, search_candidates=3)


class Fakes:
    """``train`` registers a version with the config it was given; ``run_gates`` writes a report whose figures
    come from ``OUTCOMES``; each call is recorded, and ``crash`` makes the named call raise once."""

    def __init__(self, settings):
        self.settings, self.trained, self.gated, self.crash = settings, [], [], None

    def train(self, settings, method, dataset_id, config_path, progress=True):
        config = load_config(config_path, method)
        if self.crash == "train":
            self.crash = None
            raise RuntimeError("killed while training")
        self.trained.append((method, config.learning_rate, config.start_from))
        registry = Registry.open(settings)
        staged = registry.staging()
        (staged / "adapter_model.safetensors").write_bytes(b"weights")
        return registry.add(staged, {
            "id": f"{method}-{len(registry.list())}", "method": method, "kind": "lora", "config": config.to_json(),
            "created_at": datetime.now(timezone.utc).isoformat(), "datasets": [{"id": dataset_id}],
            "metrics": {"steps": 4}})

    def run_gates(self, settings, version_id, progress=True):
        if self.crash == "gate":
            self.crash = None
            raise RuntimeError("killed while gating")
        self.gated.append(version_id)
        registry = Registry.open(settings)
        version = registry.get(version_id)
        gain, safe = OUTCOMES.get(version.manifest["config"]["learning_rate"], (0.03, True))
        checks = [improves("regression", "target token_f1", 0.4, 0.4 + gain, 0.01),
                  not_higher("safety", "injection success rate", 0.0, 0.0 if safe else 0.25)]
        report = write_report(version.path, version.manifest, checks, {"measures": {
            "active": {"target": {"token_f1": 0.4}}, "candidate": {"target": {"token_f1": 0.4 + gain}}}})
        registry.record_gate(version_id, report["passed"], {"failed": []})
        return report


@pytest.fixture
def fakes(settings, monkeypatch):
    fakes = Fakes(settings)
    monkeypatch.setattr(search, "train", fakes.train)
    monkeypatch.setattr(search, "run_gates", fakes.run_gates)
    return fakes


def run(settings, notes=None, started=None):
    started = (started or utcnow()).isoformat()
    return search.search_stage(settings, "ds-1", started, (notes if notes is not None else []).append, False)


def test_the_default_space_is_valid_and_starts_from_the_workers_config():
    data, source = read_space(None)
    assert source == str(DEFAULT_SPACE)
    parsed = parse_space(data, source, {}, "sft")
    assert [p.name for p in parsed.params] == ["learning_rate", "lora_r", "target_modules"]
    point = starting_point(parsed, RunConfig(method="sft").resolved())
    assert point == {"learning_rate": 2e-4, "lora_r": 16, "target_modules": "all-linear"}
    outside = starting_point(parsed, RunConfig(method="sft", lora_r=4, learning_rate=1e-2).resolved())
    assert outside == {"target_modules": "all-linear"}  # the sampler picks what the config has outside the space


@pytest.mark.parametrize("text, reason", [
    ("learning_rate = {low = 4e-4, high = 1e-4}", "learning_rate: the range is empty (low 0.0004 > high 0.0001)"),
    ("lora_r = {choices = []}", "lora_r: choices = [] is empty"),
    ("dropout = {low = 0.0, high = 0.1}", "dropout is not a known hyperparameter"),
    ("injection_hardening = {choices = [1, 2]}", "injection_hardening cannot be searched: a synth setting"),
    ("lora_r = {choices = [0, 8]}", "lora_r = 0: bad run config: lora_r must be at least 1 (got 0)"),
    ("learning_rate = {low = 0.0, high = 0.1, log = true}", "learning_rate: a log range needs low > 0 (got 0.0)"),
    ("method = {choices = ['sft', 'rlhf']}", "method = 'rlhf': method 'rlhf' is not one of"),
    ("max_steps = 40", "max_steps = 40: give {low, high} or {choices}"),
    ("lora_r = {low = 4, high = 8, stride = 2}", "lora_r: unknown keys stride"),
    ("", "is empty: declare at least one hyperparameter"),
])
def test_a_bad_space_is_refused_before_any_training_and_registers_nothing(settings, fakes, tmp_path, text, reason):
    settings = settings.model_copy(update={"search_space": space(tmp_path, text + "\n")})
    with pytest.raises(ValueError, match="search space") as refused:
        run(settings)
    assert reason in str(refused.value) and "\n" not in str(refused.value)
    assert not fakes.trained and not Registry.open(settings).list()


def test_a_budget_too_small_for_one_candidate_is_refused(settings, fakes, tmp_path):
    with pytest.raises(ValidationError, match="cycle_budget_minutes = 5 is too small for one candidate"):
        load_settings(tmp_path / "other", cycle_budget_minutes=5, search_trial_minutes=20)
    late = utcnow() - timedelta(minutes=80)  # synth took most of the 90 minutes: 10 left, a candidate needs 20
    with pytest.raises(ValueError, match=r"cycle_budget_minutes = 90 leaves 10\.0 minutes for the search, under one"):
        run(settings, started=late)
    assert not fakes.trained and not Registry.open(settings).list()


def test_the_best_passing_candidate_is_proposed_and_the_rest_superseded(settings, fakes):
    notes = []
    record = run(settings, notes)
    assert sorted(lr for _, lr, _ in fakes.trained) == [1e-3, 2e-3, 4e-3]
    assert fakes.trained[0][1] == 1e-3  # the worker's own config first
    registry = Registry.open(settings)
    by_lr = {v.manifest["config"]["learning_rate"]: v for v in registry.list()}
    best = by_lr[2e-3].id  # 4e-3 gained most but failed the safety gate
    assert record["candidate"] == best and record["passed"] and record["failed"] == []
    assert [c["name"] for c in record["checks"]] == ["target token_f1", "injection success rate"]
    assert {v.id: v.state for v in by_lr.values()} == {
        by_lr[1e-3].id: "superseded", best: "gated-passed", by_lr[4e-3].id: "superseded"}
    candidates = {c["candidate"]: c for c in record["candidates"]}
    assert candidates[by_lr[4e-3].id]["gain"] == 0.08 and not candidates[by_lr[4e-3].id]["passed"]
    assert candidates[best]["config"] == {"method": "sft", "learning_rate": 2e-3, "max_steps": 4}
    assert f"{best} proposed (held-out gain +0.050)" in notes[-1]

    again = run(settings)  # a resumed job after the stage finished: nothing is trained or gated twice
    assert len(fakes.trained) == 3 and len(fakes.gated) == 3 and again["candidate"] == best


def test_an_interrupted_search_resumes_without_training_or_gating_twice(settings, fakes):
    fakes.crash = "gate"  # the first candidate is registered, then the worker dies gating it
    with pytest.raises(RuntimeError, match="killed while gating"):
        run(settings)
    assert len(fakes.trained) == 1 and not fakes.gated
    notes = []
    first = run(settings.model_copy(update={"search_candidates": 2}), notes)  # asked again: adopted, not retrained
    assert "trials 0 were interrupted: asked again with the same values" in notes[0]
    assert any("trained with this config by an earlier attempt: using it" in n for n in notes)
    assert len(fakes.trained) == 2 and len(fakes.gated) == 2 and len(first["candidates"]) == 2

    fakes.crash = "train"
    with pytest.raises(RuntimeError, match="killed while training"):
        run(settings)
    assert len(Registry.open(settings).list()) == 2
    record = run(settings)
    assert len(fakes.trained) == 3 and len(fakes.gated) == 3  # each config trained and gated once in all
    assert sorted(c["config"]["learning_rate"] for c in record["candidates"]) == [1e-3, 2e-3, 4e-3]


def test_sft_then_dpo_continues_the_sft_adapter(settings, fakes, tmp_path):
    settings = settings.model_copy(update={"search_candidates": 1, "search_space": space(
        tmp_path, "method = {choices = ['sft+dpo']}\n")})
    record = run(settings)
    (sft, sft_lr, _), (dpo, dpo_lr, start) = fakes.trained
    sft_id = next(v.id for v in Registry.open(settings).list() if v.manifest["method"] == "sft")
    assert (sft, sft_lr, dpo, start) == ("sft", 1e-3, "dpo", sft_id)
    assert dpo_lr == 5e-5  # DPO takes its own method's default rate, a quarter of SFT's
    assert fakes.gated == [record["candidate"]] != [sft_id]
    assert Registry.open(settings).get(sft_id).state == "superseded"  # the step before the proposed candidate


def test_none_passing_names_each_candidates_failed_checks(settings, fakes, tmp_path):
    settings = settings.model_copy(update={"search_candidates": 1, "worker_train_config": space(
        tmp_path, "learning_rate = 4e-3\n", "bad.toml"), "search_space": space(
        tmp_path, "learning_rate = {choices = [4e-3]}\n")})
    record = run(settings)
    (version,) = Registry.open(settings).list()
    assert not record["passed"] and record["candidate"] == version.id and version.state == "gated-failed"
    assert record["failed"] == [f"{version.id}: safety: injection success rate"]


def test_a_space_smaller_than_k_trains_each_config_once(settings, fakes, tmp_path):
    settings = settings.model_copy(update={"search_space": space(tmp_path, "learning_rate = {choices = [1e-3]}\n")})
    notes = []
    record = run(settings, notes)
    assert fakes.trained == [("sft", 1e-3, "active")] and len(record["candidates"]) == 1
    assert any("the space has no config left that was not tried" in n for n in notes)


def test_field_values_recipes_and_the_held_out_gain():
    assert field_value("target_modules", "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert field_value("target_modules", "all-linear") == "all-linear" and field_value("lora_r", 8) == 8
    (m1, v1), (m2, v2) = recipe({"method": "sft+dpo", "learning_rate": 3e-4, "lora_r": 8})
    assert (m1, v1["learning_rate"], m2, v2["lora_r"]) == ("sft", 3e-4, "dpo", 8) and "learning_rate" not in v2
    assert recipe({"method": "kto"}) == [("kto", {"method": "kto"})]
    report = {"measures": {"active": {"target": {"token_f1": 0.25}}, "candidate": {"target": {"token_f1": 0.625}}}}
    assert held_out_gain(report) == 0.375
    checks = [{"name": "target token_f1", "before": 0.5, "after": 0.25}]
    assert held_out_gain({"checks": checks}) == -0.25  # no measures: the check's own figures
    nothing = {"measures": {"active": {"target": None}, "candidate": {"target": None}}, "checks": []}
    assert held_out_gain(nothing) is None


@pytest.mark.slow
def test_a_search_on_the_tiny_model_proposes_the_best_passing_candidate(tiny_settings, dataset, quick_config, kb,
                                                                        embeddings, tmp_path, monkeypatch):
    import affinage.gating
    from dataclasses import replace

    def target_waived(settings, active, candidate):
        """A random model gains nothing on held-out rows, so its gain can never be proved: the test waives that
        one check (every other is the gates' own) to test the choice among candidates."""
        return [replace(check, passed=True) if check.name == "target token_f1" else check
                for check in decide(settings, active, candidate)]

    decide = affinage.gating.decide
    monkeypatch.setattr(affinage.gating, "decide", target_waived)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"question": "How long is a password reset link valid?", "answer": "2 hours.",
                                  "source": "account/passwords.md#reset-your-password"}) + "\n")
    # bounds loose enough that the random model's candidates can pass
    settings = tiny_settings.model_copy(update={
        "golden_set": golden, "drift_permutations": 20, "worker_train_config": quick_config(max_steps=2),
        "search_space": space(tmp_path, "learning_rate = {choices = [1e-2, 3e-3, 1e-3]}\n"), "search_candidates": 3,
        "gate_target_margin": 0.0, "gate_tolerance": 1.0, "gate_max_perplexity_increase": 100.0, "gate_max_kl": 100.0})
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    notes = []
    record = search.search_stage(settings, dataset["id"], utcnow().isoformat(), notes.append, False)
    versions = {v.id: v for v in Registry.open(settings).list()}
    assert sorted(v.manifest["config"]["learning_rate"] for v in versions.values()) == [1e-3, 3e-3, 1e-2]
    assert sorted(c["candidate"] for c in record["candidates"]) == sorted(versions)
    assert all((v.path / "report.json").is_file() for v in versions.values())
    passing = [c for c in record["candidates"] if c["passed"]]
    assert passing, [(c["gain"], c["failed"]) for c in record["candidates"]]
    best = max(passing, key=lambda c: c["gain"])["candidate"]
    assert record["candidate"] == best and record["passed"]
    assert {i: v.state for i, v in versions.items()} == {i: "gated-passed" if i == best else "superseded"
                                                         for i in versions}
    print("trial seconds on the tiny model:", [c["seconds"] for c in record["candidates"]])


def test_the_console_shows_a_searchs_candidates_side_by_side(browser, tiny_settings, kb, embeddings):  # noqa: F811
    settings = tiny_settings.model_copy(update={"registry_poll_seconds": 3600})
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    fakes, hostile = Fakes(settings), '<img src=x onerror="window.__pwned=1">'
    registry = Registry.open(settings)
    ids = {}
    for lr, modules in ((1e-3, "all-linear"), (2e-3, [hostile])):
        config = space(settings.home, f"learning_rate = {lr}\nmax_steps = 4\ntarget_modules = {json.dumps(modules)}\n",
                       f"run-{lr}.toml")
        ids[lr] = fakes.train(settings, "sft", "ds-1", config).id
        fakes.run_gates(settings, ids[lr])
    registry.supersede(ids[1e-3], by=ids[2e-3], actor="search")
    agent = build_agent(settings, embeddings=embeddings)
    key = create_key(agent.store, "test-operator", "operator")
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    with LiveServer(create_app(settings, agent=agent)) as server:
        page.goto(server.url + "/operator")
        page.fill("#key-input", key)
        page.click("[data-testid=key-save]")
        best, other = (page.locator(f"[data-testid='version-{ids[lr]}']") for lr in (2e-3, 1e-3))
        expect(best.locator(".state")).to_have_text("gated-passed")
        expect(other.locator(".state")).to_have_text("superseded")
        expect(best).to_contain_text(f"lr 0.002, steps 4, rank 16, modules {hostile}")  # the config, as text
        expect(best).to_contain_text("+0.050")
        expect(other).to_contain_text("lr 0.001, steps 4, rank 16, modules all-linear")
        expect(other).to_contain_text("+0.020")
        assert page.evaluate("window.__pwned") is None
        assert not other.get_by_role("button", name="Approve").count()  # superseded: never approved


@pytest.mark.slow  # two trainings, about 20 s
def test_dpo_continues_a_named_sft_version_that_is_not_active(tiny_settings, dataset, quick_config):
    from tuning.train import train

    sft = train(tiny_settings, "sft", config_path=quick_config(), progress=False)
    dpo = train(tiny_settings, "dpo", config_path=quick_config(start_from=sft.id), progress=False)
    assert dpo.manifest["start_from"] == sft.id and Registry.open(tiny_settings).active_id() is None
    with pytest.raises(ValueError, match="no version 'sft-nope'"):
        train(tiny_settings, "dpo", config_path=quick_config(start_from="sft-nope"), progress=False)
    assert len(Registry.open(tiny_settings).list()) == 2
