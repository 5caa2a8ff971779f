"""Issue 17, point 7: the per-user cap counts failures (interactions), keeps each failure's rows together, never
drops held-out rows, and scales with the team (a share of the failures kept, above a floor).

The cap's arithmetic and selection are pure functions tested on hand-made rows; two tests run the real
``synthesize`` on a fresh workspace with a scripted teacher and a word-hashing embedder (no model is loaded, so
they stay in `make test-fast`)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import ValidationError

from affinage.cli.loop import cap_lines
from affinage.core.settings import load_settings
from affinage.factory import build_agent
from agent.corrections import review_correction
from agent.feedback import record_feedback
from retrieval.ingest import ingest
from synth_data.builder import synthesize
from synth_data.filters import ANONYMOUS, cap_failures_per_user, run_filters, user_cap
from tests.agent.light_server import HashEmbeddings

# --- the pure functions, on hand-made rows ----------------------------------------------------------------------


def test_user_cap_is_a_share_of_the_failures_kept_above_a_floor():
    # 5 users, one with 60 of 100 failures: c <= 0.25 * (40 + c) gives c <= 13.33, so 13 (13 of 53 kept: 24.5%)
    team = {"mallory": 60, "ann": 10, "bob": 10, "cid": 10, "dee": 10}
    assert user_cap(team, share=0.25, floor=5) == 13
    assert user_cap(team, share=0.25, floor=20) == 20  # the floor wins over the share
    assert user_cap({"ann": 20}, share=0.25, floor=20) is None  # one agent alone keeps all up to the floor
    assert user_cap({"ann": 21}, share=0.25, floor=20) == 20
    assert user_cap({"ann": 100, "bob": 100}, share=0.5, floor=1) is None  # each is exactly half
    assert user_cap(team, share=1.0, floor=1) is None  # share 1: no cap
    # counted over what was offered, 1,000 flooded failures beside 40 honest ones would allow 260; over what is kept, 13
    assert user_cap({**team, "mallory": 1000}, share=0.25, floor=1) == 13
    assert user_cap({"mallory": 1000, "ann": 10}, share=0.25, floor=1) == 1  # two users can't both be under 25%
    assert user_cap({"mallory": 1000, "ann": 10}, share=0.25, floor=20) == 20  # which the floor is for
    assert user_cap({}, share=0.25, floor=1) is None


@pytest.mark.parametrize(("share", "floor", "named"), [(0.0, 1, "max_user_share"), (1.5, 1, "max_user_share"),
                                                       (0.25, 0, "min_user_failures")])
def test_user_cap_refuses_bad_values_by_name(share, floor, named):
    with pytest.raises(ValueError, match=named):
        user_cap({"ann": 3}, share=share, floor=floor)


@pytest.mark.parametrize(("setting", "value"), [("max_user_share", 0), ("max_user_share", 1.5),
                                                ("min_user_failures", 0)])
def test_bad_cap_settings_are_refused_at_load_naming_the_value(home, setting, value):
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f"{setting} = {value}\n")
    with pytest.raises(ValidationError, match=rf"{setting}[\s\S]*input_value={value}"):
        load_settings(home)


def rows_of(user: str, failure: int, when: int, paraphrases: int = 2) -> list[dict]:
    """The rows one failure yields: SFT (question and paraphrases), a pair, a KTO row, a held-out paraphrase."""
    base = {"user": user, "failure": f"{user}-{failure}", "when": when}
    return ([{**base, "kind": "sft"} for _ in range(1 + paraphrases)] + [{**base, "kind": "preference"},
            {**base, "kind": "kto"}, {**base, "kind": "heldout"}])


def cap(items, share, floor):
    return cap_failures_per_user(items, user=lambda x: x["user"], failure=lambda x: x["failure"],
                                 kind=lambda x: x["kind"], when=lambda x: x["when"], share=share, floor=floor)


def test_one_user_among_many_keeps_their_most_recent_failures_whole_and_every_held_out_row():
    clock = iter(range(1000))
    items = [row for n in range(60) for row in rows_of("mallory", n, next(clock))]
    items += [row for user in ("ann", "bob", "cid", "dee") for n in range(10) for row in rows_of(user, n, next(clock))]
    kept, dropped, report = cap(items, share=0.25, floor=5)

    trained = {x["failure"] for x in kept if x["kind"] != "heldout"}
    assert sum(f.startswith("mallory") for f in trained) == 13 and len(trained) == 53  # 13 / 53 <= 0.25
    assert {f for f in trained if f.startswith("mallory")} == {f"mallory-{n}" for n in range(47, 60)}  # latest
    per_failure = Counter(x["failure"] for x in kept if x["kind"] != "heldout")
    assert set(per_failure.values()) == {5}  # every kept failure keeps all its rows: 3 SFT, a pair, a KTO row
    assert sum(x["kind"] == "heldout" for x in kept) == 100  # never dropped, of dropped failures either
    assert dropped == 47 * 5 == len(items) - len(kept)
    assert kept == [x for x in items if x in kept]  # order kept
    assert report.cap == 13 and report.failures == 100 and set(report.users) == {"mallory"}
    assert report.users["mallory"] == {"failures": 60, "kept": 13, "dropped": 47,
                                       "rows_dropped": {"sft": 141, "preference": 47, "kto": 47}}


def test_selection_is_deterministic_and_anonymous_rows_share_one_bucket():
    items = [{"user": user, "failure": f"f{n}", "when": 0, "kind": "sft"}
             for n, user in enumerate([None, "", ANONYMOUS, None, "bob"])]
    kept, dropped, report = cap(list(reversed(items)), share=0.5, floor=2)
    assert report.cap == 2 and report.users[ANONYMOUS]["dropped"] == 2  # ties by time go by failure id
    assert sorted(x["failure"] for x in kept) == ["f2", "f3", "f4"] and dropped == 2
    assert cap(items, share=0.5, floor=2)[0] == [x for x in items if x["failure"] in ("f2", "f3", "f4")]


def test_failures_with_only_held_out_rows_are_not_counted_and_the_report_adds_up():
    items = [row for n in range(4) for row in rows_of("ann", n, n)] + [
        {"user": "bob", "failure": "b", "when": 9, "kind": "heldout"}]
    kept, report = run_filters(items, [("per_user_cap", lambda xs: cap(xs, share=0.5, floor=3))])
    assert report.details["per_user_cap"].failures == 4 and report.details["per_user_cap"].cap == 3
    assert report.dropped == {"per_user_cap": 5} and len(kept) == len(items) - 5
    lines = cap_lines(report.to_json()["details"]["per_user_cap"])
    assert lines[0] == ("per-user cap: 3 failures a user (max(3 failures, 0.5 of the failures kept); 4 failures "
                        "offered; held-out rows are never dropped)")
    assert lines[1] == "  ann: kept the 3 most recent of 4 failures, dropped 1 (rows dropped: sft 3, preference 1, kto 1)"


# --- the real synthesize, on a fresh workspace ------------------------------------------------------------------

LETTERS = "bcdfghjklmnpqrstvwz"
KINDS = ("sft", "preference", "kto", "heldout")


def word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) + rng.choice("aeiou") for _ in range(4))


class Teacher(FakeListChatModel):
    """Paraphrases: three rewordings of the question, then one in other words (the held-out one, so that it is
    not lexically near any trained question); answers are never asked for (every failure carries a correction)."""

    held: dict[str, str] = {}

    def _call(self, messages, *args, **kwargs):
        question = messages[-1].content.rsplit("\n", 1)[-1]
        return "\n".join([f"1. Please: {question}", f"2. Quick one, {question}", f"3. Hi, {question}",
                          f"4. {self.held[question]}"])


def correct(agent, teacher: Teacher, rng: random.Random, user: str, n: int) -> str:
    """One failure of ``user``: a question answered badly, corrected by them and approved by an operator."""
    question = " ".join(word(rng) for _ in range(5)) + "?"
    teacher.held[question] = " ".join(word(rng) for _ in range(5))
    asked = agent.ask(question, user=user)
    fact = " ".join(word(rng) for _ in range(3))
    feedback = record_feedback(agent.store, asked.interaction_id, "down", user=user,
                               correction=f"Correction {n} by {user}: {fact}.")
    review_correction(agent.store, feedback.id, True, reviewer="op")
    return asked.interaction_id


@pytest.fixture
def workspace(home, kb):
    settings = load_settings(home)  # the defaults under test
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, llm=FakeListChatModel(responses=["We never refund."]), embeddings=embeddings)
    return agent, Teacher(responses=["unused"], held={}), random.Random(17)


def synth(agent, teacher, **overrides) -> dict:
    settings = agent.settings.model_copy(update=overrides)
    return synthesize(settings, agent.store, agent.retriever, teacher, agent.retriever.embeddings.encode,
                      teacher_name="scripted", base_model="m", progress=False).manifest


def lineage_by_kind(agent, manifest) -> dict[str, Counter]:
    lineage = json.loads((agent.settings.datasets_dir / manifest["id"] / "lineage.json").read_text())
    return {kind: Counter(lineage[kind]) for kind in KINDS}


def test_one_agents_twenty_corrections_each_yield_every_kind_under_the_defaults(workspace):
    agent, teacher, rng = workspace
    ids = [correct(agent, teacher, rng, "ann", n) for n in range(20)]
    manifest = synth(agent, teacher)
    by_kind = lineage_by_kind(agent, manifest)
    for kind in KINDS:
        assert set(by_kind[kind]) == set(ids), (kind, manifest["filters"])
    assert manifest["filters"]["dropped"]["per_user_cap"] == 0
    assert manifest["filters"]["per_user_cap"] == {"share": 0.25, "floor": 20, "failures": 20, "cap": None,
                                                   "users": {}}


def test_one_user_among_many_is_held_to_the_share_with_whole_failures_and_every_held_out_row(workspace):
    agent, teacher, rng = workspace
    mallory = [correct(agent, teacher, rng, "mallory", n) for n in range(30)]
    others = [correct(agent, teacher, rng, user, n) for user in ("ann", "bob", "cid", "dee") for n in range(5)]
    manifest = synth(agent, teacher, min_user_failures=5)  # c <= 0.25 * (20 + c): 6 of mallory's 30
    by_kind = lineage_by_kind(agent, manifest)
    trained = set(by_kind["sft"]) | set(by_kind["preference"]) | set(by_kind["kto"])
    assert trained & set(mallory) == set(mallory[-6:]) and set(others) <= trained  # her 6 most recent
    assert 6 / len(trained) <= 0.25
    for kind in ("sft", "preference", "kto"):
        assert set(by_kind[kind]) == trained, kind  # a kept failure keeps every kind
    assert set(by_kind["heldout"]) == set(mallory) | set(others)  # the cap drops no held-out row
    cap = manifest["filters"]["per_user_cap"]
    assert cap["cap"] == 6 and cap["users"]["mallory"]["dropped"] == 24
    assert sum(cap["users"]["mallory"]["rows_dropped"].values()) == manifest["filters"]["dropped"]["per_user_cap"]
