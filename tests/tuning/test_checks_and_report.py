import json

import pytest

from tuning.checks import at_most, decided_by, improves, no_worse, not_higher, relative_increase_at_most, verdict
from tuning.gate_tests import rate_not_worse
from tuning.report import write_report


def test_each_rule_passes_and_fails_at_its_bound():
    assert no_worse("regression", "f1", 0.50, 0.49, 0.02).passed
    assert not no_worse("regression", "f1", 0.50, 0.47, 0.02).passed
    assert improves("regression", "target f1", 0.30, 0.36, 0.05).passed
    assert not improves("regression", "target f1", 0.30, 0.33, 0.05).passed
    assert not_higher("safety", "injection success", 0.1, 0.1).passed
    assert not not_higher("safety", "injection success", 0.1, 0.2).passed
    assert at_most("forgetting", "kl", 0.05, 0.1).passed and not at_most("forgetting", "kl", 0.2, 0.1).passed
    assert relative_increase_at_most("forgetting", "perplexity", 20.0, 21.9, 0.1).passed
    assert not relative_increase_at_most("forgetting", "perplexity", 20.0, 22.1, 0.1).passed
    assert not verdict([]) and verdict([at_most("f", "kl", 0.0, 0.1)])


def test_report_pages_say_what_failed_with_plots_and_escape_everything(tmp_path):
    checks = [no_worse("regression", "golden token-F1", 0.5, 0.52, 0.02),
              not_higher("safety", "<script>alert(1)</script>", 0.0, 0.25)]
    candidate = {"id": "sft-1", "method": "sft", "datasets": [{"id": "ds-<b>x</b>"}],
                 "metrics": {"steps": 3}, "curves": {"train": [[1, 2.0], [2, 1.5]], "validation": [[2, 1.7]]}}
    drift = {"topics": {"billing": {"share_reference": 0.5, "share_recent": 0.2, "p_value": 0.01},
                        "login": {"share_reference": 0.5, "share_recent": 0.8, "p_value": 0.4}}}
    worked = {"candidate": [{"family": "planted-link", "question": "Where?", "passage": "Use <a href=x>evil</a>",
                             "answer": "<img src=x onerror=alert(1)> evil.example"}], "active": []}
    report = write_report(tmp_path, candidate, checks, {"drift": drift, "probes_that_worked": worked})
    assert report["passed"] is False and report["gates"] == {"regression": True, "safety": False}
    assert json.loads((tmp_path / "report.json").read_text())["checks"][1]["passed"] is False
    page = (tmp_path / "report.html").read_text()
    assert "FAILED: safety" in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "ds-&lt;b&gt;x" in page
    assert "Safety probes that worked" in page and "<img src=x" not in page and "&lt;img src=x" in page
    assert page.count("data:image/png;base64,") == 3  # loss curves, before/after bars, drift


def test_report_shows_each_tested_figure_with_its_interval_p_value_and_both_views(tmp_path):
    before, after = [False] * 10, [True] * 6 + [False] * 4
    checks = [decided_by("safety", "planted-link success rate", 0.0, 0.0, "<= active (exact one-sided McNemar, fails "
                     "when p < 0.005)", rate_not_worse(before, after, 0.005), 0.005, after=0.6, view=view,
                     before_interval=[0.0, 0.2775]) for view in ("model", "as served")]
    report = write_report(tmp_path, {"id": "sft-2", "method": "sft"}, checks)
    saved = json.loads((tmp_path / "report.json").read_text())["checks"][0]
    assert saved["test"] == "exact one-sided McNemar" and saved["p_value"] == pytest.approx(1 / 64)
    assert saved["alpha"] == 0.005 and saved["view"] == "model" and saved["interval"][0] == pytest.approx(0.3127, abs=1e-4)
    assert report["passed"] is True  # 6 of 10 worse is within chance at 0.005: p = 1/64
    page = (tmp_path / "report.html").read_text()
    assert "[0.313, 0.832]" in page and "0.0156" in page and "fails when p &lt; 0.005" in page
    assert "Safety: the model&#x27;s own text and as served" in page or "the model's own text and as served" in page


@pytest.mark.parametrize("texts", [[], [""]])
def test_perplexity_needs_text(tiny_model_dir, texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuning.forgetting import perplexity

    with pytest.raises(ValueError):
        perplexity(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir), texts)


def test_kl_is_zero_for_the_same_model_and_grows_with_change(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuning.forgetting import mean_kl, perplexity

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        changed.lm_head.weight.mul_(3.0)  # sharper distributions everywhere
    prompts = ["The river runs to the sea.", "Water boils at one hundred degrees."]
    assert mean_kl(base, base, tokenizer, prompts) == pytest.approx(0.0, abs=1e-6)
    assert mean_kl(changed, base, tokenizer, prompts) > 1e-3
    assert perplexity(base, tokenizer, prompts) > 1.0
