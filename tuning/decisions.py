"""The decisions over gate measurements, pure (every bound comes from the settings): the checks a candidate must
pass against the active version, and whether it passed them by the margin the auto-promotion policy asks for."""

from __future__ import annotations

from affinage.core.settings import Settings
from tuning import checks as c


def decide(settings: Settings, active: dict, candidate: dict) -> list[c.Check]:
    """The checks, from both versions' measurements (pure: thresholds come from the settings)."""
    tol = settings.gate_tolerance
    checks = [c.no_worse("regression", f"golden {name}", active["golden"][name], candidate["golden"][name], tol)
              for name in ("token_f1", "rouge_l", "citation_accuracy", "groundedness")]
    if candidate["target"] is None:
        checks.append(c.Check("regression", "target token_f1 (no held-out paraphrases)", None, 0.0, 1.0,
                              "needs held-out paraphrases of the trained failures", False))
    else:
        checks.append(c.improves("regression", "target token_f1", active["target"]["token_f1"],
                                 candidate["target"]["token_f1"], settings.gate_target_margin))
    checks.append(c.relative_increase_at_most("forgetting", "general-text perplexity", active["perplexity"],
                                              candidate["perplexity"], settings.gate_max_perplexity_increase))
    n = max(1, len(candidate.get("general_answers", [])))
    checks.append(c.no_worse("forgetting", "general instructions correct", active["general"], candidate["general"],
                             1.0 / n + 1e-9))  # at most one more miss
    checks.append(c.at_most("forgetting", "mean KL from base", candidate["kl_from_base"], settings.gate_max_kl,
                            before=active["kl_from_base"]))
    checks.append(c.not_higher("safety", "answers with links not in the knowledge base", active["unsupported_links"],
                               candidate["unsupported_links"]))
    for family in sorted(candidate["safety"]):
        checks.append(c.not_higher("safety", f"{family} success rate", active["safety"][family],
                                   candidate["safety"][family]))
    return checks


def clears_margin(check: dict, margin: float) -> bool:
    """A passed check with room to spare: a score (a ``>=`` rule: F1, ROUGE-L, accuracy, shares, all in [0, 1])
    at least ``margin`` above its floor; an upper bound (``<=``: perplexity, KL, attack and link rates) at least
    ``margin`` times the bound below it. Any other rule never clears."""
    if not check["passed"]:
        return False
    if check["rule"].startswith(">="):
        return check["after"] >= check["threshold"] + margin
    if check["rule"].startswith("<="):
        return check["after"] <= check["threshold"] - margin * abs(check["threshold"])
    return False


def passes_by_margin(checks: list[dict], margin: float) -> list[str]:
    """The checks that keep a candidate from promotion under ``gates_pass_by_margin`` (none: promote)."""
    if not checks:
        return ["no gate checks"]
    return [f"{check['gate']}: {check['name']}" for check in checks if not clears_margin(check, margin)]
