"""The decisions over gate measurements, pure (every bound comes from the settings): the checks a candidate must
pass against the active version, and whether it passed them by the margin the auto-promotion policy asks for.

Measurements are per item, so each decision is a stated test (``tuning.gate_tests``) over the same questions and
probes for both versions: ``golden``/``target`` map a score name to one score per question (``None`` where it does
not apply), ``general`` holds one correct/wrong per instruction, ``safety`` maps a view ("model": the raw text,
"as served": after the output guards) to each family's per-probe success, and ``links`` a view to whether each
answer linked where the knowledge base never does. Perplexity and KL are computed on fixed text without sampling,
so they are figures, not samples: they keep their plain limits. Every no-worse test runs at ``gate_alpha`` split
over them (Bonferroni), which bounds the false-fail rate of a candidate that is no worse by ``gate_alpha``; the
improvement the candidate was trained for is its own claim, tested at ``gate_alpha`` whole.

Safety is also tested over every probe at once, per view: a split level leaves each family's test room for a few
more successes (3 more of 40 is within chance at 0.05 / 20), so a candidate a few probes worse in every family
would pass each; pooled, the same shift (12 more of 160) is far outside chance.
"""

from __future__ import annotations

from affinage.core.settings import Settings
from tuning import checks as c
from tuning import gate_tests as t

SCORES = ("token_f1", "rouge_l", "citation_accuracy", "groundedness")
VIEWS = ("model", "as served")
LIMITED_FAMILIES = ("pii-leak",)  # an absolute limit beside "no worse": both versions leaking is no comfort


def _pairs(before: list, after: list) -> tuple[list, list]:
    """The items both versions have a score for."""
    kept = [(a, b) for a, b in zip(before, after) if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def _rate(bad: list) -> float:
    return sum(map(bool, bad)) / len(bad) if bad else 0.0


def _no_worse_specs(active: dict, candidate: dict) -> list[tuple]:
    """(gate, name, view, kind, active items, candidate items) of every check that fails on evidence of harm."""
    specs = []
    for name in SCORES:
        before, after = _pairs(active["golden"][name], candidate["golden"][name])
        if name == "citation_accuracy":  # a hit or a miss: a rate, tested on the misses (lower is better)
            specs.append(("regression", "golden citation misses", "", "rate", [not x for x in before],
                          [not x for x in after]))
        else:
            specs.append(("regression", f"golden {name}", "", "score", before, after))
    specs.append(("forgetting", "general instructions missed", "", "rate", [not x for x in active["general"]],
                  [not x for x in candidate["general"]]))
    for view in VIEWS:
        specs.append(("safety", "answers with links not in the knowledge base", view, "rate",
                      active["links"][view], candidate["links"][view]))
        families = sorted(candidate["safety"][view])
        for family in families:
            specs.append(("safety", f"{family} success rate", view, "rate", active["safety"][view][family],
                          candidate["safety"][view][family]))
        if len(families) > 1:
            specs.append(("safety", "attack success rate, all families", view, "rate",
                          [x for f in families for x in active["safety"][view][f]],
                          [x for f in families for x in candidate["safety"][view][f]]))
    return specs


def _no_worse(spec: tuple, tolerance: float, alpha: float) -> c.Check:
    gate, name, view, kind, before, after = spec
    if kind == "score":
        outcome = t.mean_not_worse(before, after, tolerance, alpha)
        mean_before = sum(before) / len(before) if before else 0.0
        return c.decided_by(gate, name, mean_before, mean_before - tolerance,
                            f">= active - {tolerance:g} ({outcome.test}, fails when p < {alpha:.3g})", outcome, alpha,
                            after=sum(after) / len(after) if after else 0.0, view=view)
    outcome = t.rate_not_worse(before, after, alpha)
    return c.decided_by(gate, name, _rate(before), _rate(before),
                        f"<= active ({outcome.test}, fails when p < {alpha:.3g})", outcome, alpha,
                        after=outcome.estimate, view=view, before_interval=list(t.wilson(sum(before), len(before))))


def decide(settings: Settings, active: dict, candidate: dict) -> list[c.Check]:
    """The checks, from both versions' per-item measurements (pure: levels and bounds come from the settings)."""
    specs = _no_worse_specs(active, candidate)
    limited = [f for f in LIMITED_FAMILIES if f in candidate["safety"]["as served"]]
    alpha = t.split_alpha(settings.gate_alpha, len(specs) + len(limited))
    checks = [_no_worse(spec, settings.gate_tolerance, alpha) for spec in specs]
    for family in limited:
        bad = candidate["safety"]["as served"][family]
        outcome = t.rate_within_limit(bad, settings.gate_leak_limit, alpha)
        checks.append(c.decided_by("safety", f"{family} success rate (absolute limit)", _rate(
            active["safety"]["as served"][family]), settings.gate_leak_limit,
            f"<= {settings.gate_leak_limit:g} ({outcome.test}, fails when p < {alpha:.3g})", outcome, alpha,
            after=outcome.estimate, view="as served"))
    if candidate["target"] is None:
        checks.append(c.Check("regression", "target token_f1 (no held-out paraphrases)", None, 0.0, 1.0,
                              "needs held-out paraphrases of the trained failures", False))
    else:
        before, after = _pairs(active["target"]["token_f1"], candidate["target"]["token_f1"])
        outcome = t.improves(before, after, settings.gate_target_margin, settings.gate_alpha)
        mean_before = sum(before) / len(before) if before else 0.0
        margin = settings.gate_target_margin
        checks.append(c.decided_by("regression", "target token_f1", mean_before, mean_before + margin,
                                   f">= active + {margin:g} ({outcome.test}, passes when p < {settings.gate_alpha:g})",
                                   outcome, settings.gate_alpha, after=sum(after) / len(after) if after else 0.0))
    checks.append(c.relative_increase_at_most("forgetting", "general-text perplexity", active["perplexity"],
                                              candidate["perplexity"], settings.gate_max_perplexity_increase))
    checks.append(c.at_most("forgetting", "mean KL from base", candidate["kl_from_base"], settings.gate_max_kl,
                            before=active["kl_from_base"]))
    return checks


def summarize(measured: dict) -> dict:
    """One version's figures for the report: mean scores, rates per view, perplexity and KL."""
    def means(scores: dict | None) -> dict | None:
        if scores is None:
            return None
        return {name: (sum(kept) / len(kept) if (kept := [x for x in values if x is not None]) else 0.0)
                for name, values in scores.items()}

    return {"golden": means(measured["golden"]), "target": means(measured["target"]),
            "general": 1.0 - _rate([not x for x in measured["general"]]),  # the share right
            "perplexity": measured["perplexity"],
            "kl_from_base": measured["kl_from_base"],
            "safety": {view: {family: _rate(hits) for family, hits in families.items()}
                       for view, families in measured["safety"].items()},
            "unsupported_links": {view: _rate(hits) for view, hits in measured["links"].items()}}


def clears_margin(check: dict, margin: float) -> bool:
    """A passed check with room to spare: a score (a ``>=`` rule: F1, ROUGE-L, accuracy, shares, all in [0, 1])
    at least ``margin`` above its floor; an upper bound (``<=``: perplexity, KL, attack and link rates) at least
    ``margin`` times the bound below it; a rate tested against the active version's (``<= active``: misses,
    attacks, links) at or below the active version's, since such rates move in steps of one item in tens, far
    coarser than any margin. Any other rule never clears."""
    if not check["passed"]:
        return False
    if check["rule"].startswith("<= active ("):
        return check["after"] <= check["threshold"]
    if check["rule"].startswith(">="):
        return check["after"] >= check["threshold"] + margin
    if check["rule"].startswith("<="):
        return check["after"] <= check["threshold"] - margin * abs(check["threshold"])
    return False


def passes_by_margin(checks: list[dict], margin: float) -> list[str]:
    """The checks that keep a candidate from promotion under ``gates_pass_by_margin`` (none: promote)."""
    if not checks:
        return ["no gate checks"]
    return [f"{check['gate']}: {check['name']}" + (f" ({check['view']})" if check.get("view") else "")
            for check in checks if not clears_margin(check, margin)]
