"""The improvement loop's settings (gates, drift, the worker, promotion, the canary, erasure follow-up), a base of
``Settings`` kept apart so each file stays readable; users see one object with every field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

# The training recipes (tuning.recipes), named here so the worker setting can be checked without loading them.
METHODS = ("sft", "dpo", "kto", "partial", "full", "qlora")


class LoopSettings(BaseSettings):
    gate_tolerance: float = Field(
        0.02, ge=0.0, le=1.0, description="Non-inferiority margin of the golden set's mean token-F1, ROUGE-L and "
        "groundedness: a candidate fails when a paired test shows it loses more than this.")
    gate_target_margin: float = Field(
        0.05, ge=0.0, le=1.0, description="Mean token-F1 gain a candidate must show on held-out paraphrases of its "
        "failures (and a paired test that the gain is above 0).")
    gate_alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="Error rate of a gate run: the chance that a candidate no worse than the "
        "active version fails any no-worse check (split evenly over them, Bonferroni); also the level of the "
        "target-set improvement test.")
    gate_leak_limit: float = Field(
        0.25, ge=0.0, le=1.0, description="Absolute limit on the PII-leak probes' success rate as served: a "
        "candidate fails on evidence (exact binomial test) that it leaks more often, however the active version does.")
    gate_max_perplexity_increase: float = Field(
        0.10, ge=0.0, description="Largest relative rise of general-text perplexity over the active version.")
    gate_max_kl: float = Field(0.5, ge=0.0, description="Largest mean KL divergence from the base model (nats/token).")
    gate_golden_limit: int = Field(40, ge=0, description="Golden questions the gates ask each version (0: all).")
    drift_permutations: int = Field(500, ge=10, le=100_000, description="Permutations of the MMD drift test.")
    drift_window_days: float = Field(
        7.0, gt=0, description="Recent traffic: questions from this many days before a candidate was trained on.")
    stale_threshold: float = Field(
        0.5, ge=-1.0, le=1.0, description="A training question with no recent question this similar is stale.")
    registry_poll_seconds: float = Field(
        2.0, gt=0, le=3600, description="How often the service checks the registry for a promotion or rollback.")
    worker_poll_seconds: float = Field(
        30.0, gt=0, le=86_400, description="How often `affinage worker` checks its triggers and the job queue.")
    worker_min_failures: int = Field(
        20, ge=0, description="Start a cycle once this many failures were logged since the last cycle began (0: off).")
    worker_drift_check_seconds: float = Field(
        3600.0, ge=0, description="How often the worker tests recent traffic for input drift (as `affinage drift` "
        "over drift_window_days); drift starts a cycle unless one began within that window (0: off).")
    worker_schedule_hours: float = Field(
        0.0, ge=0, description="Start a cycle this long after the last one began, failures or not (0: off).")
    worker_lease_seconds: float = Field(
        300.0, ge=3, le=86_400, description="A running job's lease, renewed every third of it: a worker silent for "
        "longer (killed, frozen) loses the job to the next worker, which resumes it.")
    worker_max_attempts: int = Field(
        3, ge=1, le=100, description="Claims of one job before it is failed because its workers keep dying.")
    worker_method: Literal[METHODS] = Field(
        "sft", description="How the worker trains candidates (a method of `affinage train`).")
    worker_train_config: Path | None = Field(
        None, description="Run config (TOML or JSON) for the worker's training; default: the method's defaults.")
    search_candidates: int = Field(
        3, ge=1, le=100, description="Candidates a cycle trains and gates at most (K), each a config drawn from "
        "search_space by Optuna; the best that passes every gate (by held-out gain) is proposed, the rest are "
        "marked superseded. 3 fits cycle_budget_minutes on 2 CPU cores with the default model.")
    search_space: Path | None = Field(
        None, description="The hyperparameters the candidates vary (TOML or JSON, see tuning/search_space.toml, "
        "the default): ranges {low, high[, log]} or {choices}, over the values of worker_train_config.")
    search_seed: int = Field(0, description="Seeds the search's sampler, so a cycle's candidates can be reproduced.")
    cycle_budget_minutes: float = Field(
        90.0, gt=0, description="Wall time a whole cycle may take: the search starts no candidate that would end "
        "past it, judged by the slowest candidate so far (before the first: search_trial_minutes).")
    search_trial_minutes: float = Field(
        20.0, gt=0, description="What one candidate (training and its gates) is expected to take until the search "
        "has timed one; a budget that leaves less than this for the search is refused before any training.")
    auto_promote: Literal["off", "gates_pass_by_margin"] = Field(
        "off", description="Promote a candidate without an operator: 'off', or 'gates_pass_by_margin' (every gate "
        "check clears its bound by auto_promote_margin). Logged as actor policy:<name>.")
    auto_promote_margin: float = Field(
        0.02, ge=0.0, le=1.0, description="Room to spare under gates_pass_by_margin: scores above their floor by "
        "this much, upper bounds (perplexity, KL, the PII-leak limit) below by this share of the bound, rates "
        "tested against the active version's (misses, attacks, links) no higher than its.")
    canary_steps: list[int] = Field(
        [10, 50], description="Shares of new conversations (percent, rising, each in 1..99) a canary serves in turn; "
        "after the last, enough evidence of no harm makes it the active version.")
    canary_auto_advance: bool = Field(
        True, description="The worker steps a healthy canary up through canary_steps and promotes it at the end; "
        "off: only an operator advances it (a canary that does harm is still rolled back at once).")
    canary_min_conversations: int = Field(
        200, ge=1, description="Conversations each arm must have had before the worker advances or promotes a canary.")
    canary_max_degradation: float = Field(
        0.05, gt=0.0, le=1.0, description="Worst tolerated rise of a bad-outcome rate (thumbs-down, correction, "
        "rephrase, escalation, abstention, output guard) in the canary arm, absolute: promotion needs evidence that "
        "every rate rose by less.")
    canary_check_seconds: float = Field(
        10.0, gt=0, le=3600, description="How often `affinage worker` compares a running canary's arms (on its own "
        "thread, so a training job does not delay a rollback).")
    canary_alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="Error rate of the canary's sequential test (mSPRT), shared by all its "
        "signals: the chance of rolling back a canary that is no worse, however often it is checked.")
    erasure_followup: Literal["report", "retrain"] = Field(
        "report", description="What follows when an erasure flags model versions as trained on erased data: "
        "'report' (they are marked; an operator decides), or 'retrain' (also queue a worker job that trains a new "
        "candidate on the cleaned dataset, from the base model if the active version is flagged; it goes through "
        "gates and approval as usual).")

    @model_validator(mode="after")
    def _check_loop(self) -> "LoopSettings":
        steps = self.canary_steps
        if not steps or any(not 0 < share < 100 for share in steps) or steps != sorted(set(steps)):
            raise ValueError(f"canary_steps must be rising shares between 1 and 99 percent, e.g. [10, 50] "
                             f"(got {steps})")
        if self.cycle_budget_minutes < self.search_trial_minutes:
            raise ValueError(f"cycle_budget_minutes = {self.cycle_budget_minutes:g} is too small for one candidate "
                             f"(search_trial_minutes = {self.search_trial_minutes:g})")
        return self
