"""`affinage demo` end to end on the tiny model: traffic logged, feedback and corrections recorded, a dataset built,
candidates trained and gated, the best passing one promoted (none, where nothing was gained), and the before/after
figures printed."""

import json
from dataclasses import replace

import pytest
from sqlalchemy import select

import affinage.gating
from affinage.cli import main
from affinage.demo_report import VARIANTS
from affinage.demo_run import TRAFFIC
from affinage.core.settings import load_settings
from affinage.core.tables import Example, Feedback, Interaction
from affinage.core.store import Store
from affinage.core.datasets import list_datasets
from tuning.registry import Registry


def run_demo(tmp_path, tiny_model_dir, capsys, candidates: int) -> tuple:
    """The demo on the first three traffic lines with a reduced search; its output and store."""
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("".join(TRAFFIC.read_text().splitlines(keepends=True)[:3]))
    run = tmp_path / "run.toml"
    run.write_text('max_steps = 2\nbatch_size = 2\ngrad_accum = 1\nmax_length = 256\nlora_r = 4\nlora_alpha = 8\n'
                   'eval_steps = 2\nsave_steps = 2\nearly_stopping_patience = 0\n')
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'chat_model = "{tiny_model_dir}"\nmax_new_tokens = 8\ngate_golden_limit = 2\n'
                                      f'drift_permutations = 20\nworker_train_config = "{run}"\n'
                                      f'search_candidates = {candidates}\n')

    assert main(["demo", "--home", str(home), "--traffic", str(traffic)]) == 0
    return capsys.readouterr().out, home, traffic, Store(load_settings(home).db_url)


@pytest.mark.slow
def test_the_demo_runs_one_cycle_and_prints_before_and_after(tmp_path, tiny_model_dir, capsys):
    out, home, traffic, store = run_demo(tmp_path, tiny_model_dir, capsys, candidates=1)
    with store.session() as session:
        interactions = session.scalars(select(Interaction)).all()
        feedback = session.scalars(select(Feedback)).all()
        examples = session.scalars(select(Example)).all()
    assert len(interactions) == 3 and {i.channel for i in interactions} == {"api"}
    assert len(feedback) == 3  # the tiny model's answers never hold the key fact: three thumbs-down
    assert all(f.rating == "down" and f.correction and f.review == "approved" for f in feedback)
    assert sum(e.origin == "correction" for e in examples) == 3  # the operator's approvals reached the bank

    datasets = list_datasets(home / "datasets")
    hardened = datasets[0]["injection_hardening"]["rows"]["sft"]  # two per failure that retrieved a passage
    assert len(datasets) == 1 and hardened % 2 == 0 and 2 <= hardened <= 2 * 3
    assert datasets[0]["counts"]["sft"] - hardened == 9  # each question and its two paraphrases
    heldout = (home / "datasets" / datasets[0]["id"] / "heldout.jsonl").read_text().splitlines()
    assert len(heldout) == 6
    recorded = {q for line in traffic.read_text().splitlines() for q in json.loads(line)["paraphrases"][2:]}
    assert {json.loads(line)["question"] for line in heldout} == recorded  # the last two, never trained on

    # A random model gains nothing on the held-out paraphrases: the gain test refuses its candidate, whatever the
    # other gates say, and the demo says so
    versions = {v.id: v for v in Registry(home / "registry", store).list()}
    assert len(versions) == 1 and all(v.state == "gated-failed" for v in versions.values())
    assert all("regression: target token_f1" in v.gate["failed"] for v in versions.values())
    assert all((v.path / "report.html").is_file() for v in versions.values())
    shown = next(v for i, v in versions.items() if f"candidate {i}: gates" in out)
    assert "not promoted" in out and "approved and promoted" not in out

    assert "held-out paraphrases of the failures (n=6, never trained on)" in out
    for _, label in VARIANTS:
        assert label in out
    assert "forgetting (gate report): general-text perplexity" in out
    report = json.loads((shown.path / "report.json").read_text())
    fell_for = report["probes_that_worked"]["candidate"]
    assert f"the candidate fell for {len(fell_for)} of {report['sets']['safety_probes']} attack probes" in out
    assert all(f"fell for ({p['family']}): {p['question']} -> " in out for p in fell_for)  # what a refusal rests on
    assert "wall time: setup" in out and "total" in out


@pytest.mark.slow
def test_the_demo_promotes_the_best_candidate_that_passes_every_gate(tmp_path, tiny_model_dir, capsys, monkeypatch):
    def gain_waived(settings, active, candidate):
        """A random model's gain can never be proved (the test above): waived here, every other check the gates'
        own, to hold the demo to promoting whatever passes."""
        return [replace(check, passed=True) if check.name == "target token_f1" else check
                for check in decide(settings, active, candidate)]

    decide = affinage.gating.decide
    monkeypatch.setattr(affinage.gating, "decide", gain_waived)
    out, home, _, store = run_demo(tmp_path, tiny_model_dir, capsys, candidates=2)  # the demo's own trains one

    versions = {v.id: v for v in Registry(home / "registry", store).list()}
    assert sorted(v.state for v in versions.values()) == ["active", "superseded"], out
    active = next(i for i, v in versions.items() if v.state == "active")
    assert f"candidate {active}: gates PASSED; approved and promoted by demo" in out
    assert any(e["action"] == "promoted" and e["version"] == active and e["actor"] == "demo"
               for e in Registry(home / "registry", store).events())


def test_the_demo_refuses_a_used_workspace(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "index").mkdir(parents=True)
    assert main(["demo", "--home", str(home)]) == 1
    assert f"{home / 'index'} exists" in capsys.readouterr().err
