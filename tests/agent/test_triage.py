"""Triage: clustering and remedy rules against hand-made numbers, then a real SQLite log end to end."""

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from affinage.core.tables import Example, Feedback, Interaction
from affinage.core.store import Store
from agent.triage import (
    MAX_CLUSTER_INPUT,
    Failure,
    Fix,
    RemedyRules,
    TopicStats,
    build_topics,
    cluster,
    render_text,
    suggest_remedy,
    topic_label,
    topic_stats,
    triage,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def unit(*values):
    v = np.asarray(values, dtype=float)
    return v / np.linalg.norm(v)


def angle(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# --- cluster ----------------------------------------------------------------------------------------------------

def test_cluster_two_tight_groups_and_an_outlier():
    vectors = np.array([
        unit(0, 1, 0.05),  # group B (2 members) comes first in the input ...
        unit(1, 0.05, 0),  # group A (3 members)
        unit(0.02, 0.02, 1),  # the outlier
        unit(1, 0, 0.05),
        unit(0.05, 1, 0),
        unit(1, 0.03, 0.03),
    ])
    # ... but the bigger group gets label 0; the outlier is alone.
    assert cluster(vectors, 0.9) == [1, 0, 2, 0, 1, 0]
    assert cluster(vectors, 0.9, linkage="complete") == [1, 0, 2, 0, 1, 0]
    assert cluster(vectors, 0.99999) == [0, 1, 2, 3, 4, 5]  # nothing merges: singletons in input order
    assert cluster(vectors, -1.0) == [0] * 6  # everything merges


def test_average_and_complete_linkage_by_hand():
    # Unit vectors at 0°, 40° and 85°: cos 40° = 0.766, cos 45° = 0.707, cos 85° = 0.087. The first merge is {0, 1}
    # (0.766). Average linkage then scores {0,1}–2 at (0.087 + 0.707) / 2 = 0.3971, complete linkage at 0.087.
    vectors = np.array([angle(0), angle(40), angle(85)])
    assert cluster(vectors, 0.6) == [0, 0, 1]
    assert cluster(vectors, 0.397) == [0, 0, 0]
    assert cluster(vectors, 0.398) == [0, 0, 1]
    assert cluster(vectors, 0.3, linkage="complete") == [0, 0, 1]
    assert cluster(vectors, 0.08, linkage="complete") == [0, 0, 0]
    assert cluster(vectors, 0.8) == [0, 1, 2]


def _naive_average_linkage(x, threshold):
    """The textbook O(n³) algorithm: recompute every pair's mean similarity each round."""
    sim = x @ x.T
    groups = [[i] for i in range(len(x))]
    while len(groups) > 1:
        best, pair = -np.inf, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                score = sim[np.ix_(groups[a], groups[b])].mean()
                if score > best:
                    best, pair = score, (a, b)
        if best < threshold:
            break
        a, b = pair
        groups[a] = groups[a] + groups[b]
        del groups[b]
    return sorted(sorted(g) for g in groups)


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.4, 0.6])
def test_cluster_matches_the_textbook_algorithm(threshold):
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 8))
    x = np.vstack([c + rng.normal(scale=0.6, size=(10, 8)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = cluster(x, threshold)
    groups = {}
    for row, label in enumerate(labels):
        groups.setdefault(label, []).append(row)
    assert sorted(groups.values()) == _naive_average_linkage(x, threshold)
    sizes = [len(groups[label]) for label in sorted(groups)]
    assert sizes == sorted(sizes, reverse=True)
    assert cluster(x, threshold) == labels  # deterministic


def test_cluster_edges_and_bad_input():
    assert cluster(np.zeros((0, 4)), 0.5) == []
    assert cluster(np.array([[3.0, 4.0]]), 0.5) == [0]
    assert cluster(np.array([[3.0, 4.0], [0.6, 0.8]]), 0.99) == [0, 0]  # rows are normalised
    with pytest.raises(ValueError, match="2-D"):
        cluster(np.ones(3), 0.5)
    with pytest.raises(ValueError, match="1.5"):
        cluster(np.ones((2, 2)), 1.5)
    with pytest.raises(ValueError, match="ward"):
        cluster(np.ones((2, 2)), 0.5, linkage="ward")
    with pytest.raises(ValueError, match="NaN"):
        cluster(np.array([[np.nan, 1.0]]), 0.5)
    with pytest.raises(ValueError, match=str(MAX_CLUSTER_INPUT)):
        cluster(np.ones((MAX_CLUSTER_INPUT + 1, 2)), 0.5)


# --- remedies ---------------------------------------------------------------------------------------------------

def test_knowledge_gap_when_most_failures_had_weak_retrieval():
    remedy, why = suggest_remedy(TopicStats(count=5, users=3, weak=4, negative=1, mean_top_score=0.21))
    assert remedy == "knowledge_gap"
    assert "4 of 5" in why and "0.21" in why
    # A gap wins even over persistent behaviour: no prompt or training can invent the missing passage.
    assert suggest_remedy(TopicStats(count=4, users=3, weak=2, ungrounded=4, behaviour=4))[0] == "knowledge_gap"


def test_behaviour_when_confident_retrieval_fails_persistently():
    stats = TopicStats(count=4, users=3, weak=0, ungrounded=3, refusals=1, behaviour=4, mean_top_score=0.82)
    remedy, why = suggest_remedy(stats)
    assert remedy == "behaviour"
    assert "4 of 4" in why and "3 users" in why and "ungrounded (3)" in why
    # Tone and format complaints count as behaviour too.
    assert suggest_remedy(TopicStats(count=3, users=2, style=2, behaviour=2))[0] == "behaviour"


def test_behaviour_when_failures_continue_after_a_correction_example():
    remedy, why = suggest_remedy(TopicStats(count=3, users=1, negative=3, corrected=1, after_fix=2))
    assert remedy == "behaviour"
    assert "2 of 3" in why and "example bank" in why
    # One failure after the fix is not yet enough with the default rules; a stricter rule set makes it so.
    assert suggest_remedy(TopicStats(count=3, users=1, negative=3, after_fix=1))[0] == "prompt_retrieval"
    assert suggest_remedy(TopicStats(count=3, users=1, negative=3, after_fix=1),
                          RemedyRules(after_fix_min=1))[0] == "behaviour"


def test_prompt_retrieval_otherwise():
    remedy, why = suggest_remedy(TopicStats(count=3, users=2, weak=1, negative=3, corrected=2, mean_top_score=0.8))
    assert remedy == "prompt_retrieval"
    assert "2 of 3" in why and "example bank" in why
    # Behaviour kinds that do not persist (one user, or too few failures) are still the cheap fix's job.
    assert suggest_remedy(TopicStats(count=3, users=1, ungrounded=3, behaviour=3))[0] == "prompt_retrieval"
    assert suggest_remedy(TopicStats(count=2, users=2, ungrounded=2, behaviour=2))[0] == "prompt_retrieval"
    # ... and so do thumbs-down without a behaviour majority, however many users.
    assert suggest_remedy(TopicStats(count=6, users=4, negative=6, ungrounded=2, behaviour=2))[0] == "prompt_retrieval"


def test_stats_and_rules_reject_bad_values():
    with pytest.raises(ValueError, match="count"):
        TopicStats(count=0)
    with pytest.raises(ValueError, match="weak"):
        TopicStats(count=2, weak=3)
    with pytest.raises(ValueError, match="gap_share"):
        RemedyRules(gap_share=0)
    with pytest.raises(ValueError, match="persist_min_users"):
        RemedyRules(persist_min_users=0)


def test_topic_stats_by_hand():
    def failure(n, **kw):
        return Failure(interaction_id=str(n), question="q", created_at=T0 + timedelta(hours=n), **kw)

    confident = ({"source": "a.md#x", "score": 0.8},)
    failures = [
        failure(0, user="u1", abstained=True, signals=({"kind": "weak_retrieval"},), retrieved=()),
        failure(1, user="u2", signals=({"kind": "thumbs_down"}, {"kind": "correction_submitted"}),
                retrieved=confident, ratings=("down",), corrections=("Do X.",)),
        failure(2, user="u2", signals=({"kind": "ungrounded"},), retrieved=({"source": "a.md#x", "score": 0.6},)),
        failure(3, signals=({"kind": "thumbs_down"},), retrieved=confident, ratings=("down",),
                comments=("far too long and rambling",)),
    ]
    fix = Fix(created_at=T0 + timedelta(hours=1, minutes=30), question="q")
    stats = topic_stats(failures, [fix])
    assert stats == TopicStats(count=4, users=3, weak=1, negative=2, corrected=1, ungrounded=1, refusals=0, style=1,
                               behaviour=2, after_fix=2, mean_top_score=pytest.approx((0.8 + 0.6 + 0.8) / 3))


def test_topic_label_uses_the_most_shared_words():
    assert topic_label(["How do I export invoices to CSV?", "Export of invoices fails", "CSV export is empty"]) == \
        "export invoices csv"
    assert topic_label(["?"]) == "?"


# --- end to end over a real SQLite log ------------------------------------------------------------------------

TOPIC_AXES = {"refund": 0, "password": 1, "export": 2}


def fake_embed(texts):
    """Each topic keyword is an axis; a little deterministic per-question noise keeps questions distinct."""
    out = []
    for text in texts:
        v = np.zeros(8)
        for word, axis in TOPIC_AXES.items():
            if word in text.lower():
                v[axis] = 1.0
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        v[3:] = np.random.default_rng(seed).uniform(0, 0.15, size=5)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


GAP = ["Can I get a refund in bitcoin?", "Do you refund crypto payments?", "Can I get a refund in bitcoin?",
       "Refund to a gift card possible?", "Will you refund the annual plan in Monero?"]
WRONG = ["How long is the password reset link valid?", "Password reset link expired, why?",
         "When does the password reset email expire?"]
BEHAVIOUR = ["How do I export invoices?", "Export all tickets to CSV", "Can I export the audit log?",
             "Export reports to PDF"]


def _interaction(store, question, at, signals, retrieved, user=None, abstained=False, channel="api"):
    row = Interaction(question=question, answer="an answer", prompt_version="p1", model_version="m1", latency_s=0.5,
                      signals=[{"kind": k, "reason": "test", "strength": 1.0} for k in signals],
                      retrieved=retrieved, abstained=abstained, user=user, channel=channel, created_at=at)
    return store.add(row)


@pytest.fixture
def seeded(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/t.db")
    weak = [{"chunk_id": "c9", "source": "billing/plans.md#pricing", "score": 0.12}]
    good_pw = [{"chunk_id": "c1", "source": "account/password.md#reset", "score": 0.81},
               {"chunk_id": "c2", "source": "account/login.md#sso", "score": 0.55}]
    good_export = [{"chunk_id": "c5", "source": "data/export.md#csv", "score": 0.77}]
    at = T0
    ids = {"gap": [], "wrong": [], "behaviour": []}
    for n, q in enumerate(GAP):
        at += timedelta(minutes=7)
        ids["gap"].append(_interaction(store, q, at, ["weak_retrieval"], weak, user=f"u{n % 2}", abstained=True).id)
    for n, q in enumerate(WRONG):
        at += timedelta(minutes=7)
        row = _interaction(store, q, at, ["thumbs_down", "correction_submitted"], good_pw, user=f"u{n % 2}")
        store.add(Feedback(interaction_id=row.id, rating="down", correction="The link is valid for 2 hours.",
                           user=row.user, created_at=at + timedelta(minutes=1)))
        ids["wrong"].append(row.id)
    for n, q in enumerate(BEHAVIOUR):
        at += timedelta(minutes=7)
        ids["behaviour"].append(_interaction(store, q, at, ["ungrounded"], good_export, user=f"u{n % 3}").id)
    # Not failures, or not in scope: no signals, an eval run, and one from before `since`.
    _interaction(store, "How do I export invoices?", at, [], good_export, user="u0")
    _interaction(store, "Do you refund crypto payments?", at, ["weak_retrieval"], weak, channel="eval")
    _interaction(store, "Export everything to XML", T0 - timedelta(days=30), ["ungrounded"], good_export, user="u9")
    yield store, ids
    store.close()


def test_triage_groups_failures_and_suggests_remedies(seeded):
    store, ids = seeded
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return fake_embed(texts)

    topics = triage(store, embed, since=T0 - timedelta(days=1))
    assert len(calls) == 1 and sorted(calls[0]) == sorted(GAP + WRONG + BEHAVIOUR)  # eval, old, clean rows left out
    assert [(t.count, t.remedy) for t in topics] == [(5, "knowledge_gap"), (4, "behaviour"), (3, "prompt_retrieval")]
    gap, behaviour, wrong = topics
    assert [t.id for t in topics] == [0, 1, 2]

    assert gap.interaction_ids == ids["gap"]
    assert gap.users == 2
    assert gap.signal_counts == {"weak_retrieval": 5}
    assert gap.label.split()[0] == "refund" and "get" not in gap.label.split()
    assert sorted(gap.doc_questions) == sorted(set(GAP))  # distinct: the repeated question is listed once
    assert gap.doc_questions[0] == "Can I get a refund in bitcoin?"  # asked twice: first
    assert gap.top_sources == [("billing/plans.md#pricing", 5)]

    assert behaviour.interaction_ids == ids["behaviour"]
    assert behaviour.users == 3
    assert behaviour.signal_counts == {"ungrounded": 4}
    assert "export" in behaviour.label.split()
    assert behaviour.doc_questions == []
    assert "4 of 4" in behaviour.why

    assert wrong.interaction_ids == ids["wrong"]
    assert wrong.users == 2
    assert wrong.signal_counts == {"thumbs_down": 3, "correction_submitted": 3}
    assert wrong.stats.corrected == 3 and wrong.stats.negative == 3
    assert wrong.top_sources == [("account/password.md#reset", 3), ("account/login.md#sso", 3)]  # ranked first
    assert wrong.doc_questions == []

    for topic in topics:
        assert 1 <= len(topic.examples) <= 3
        assert len(set(topic.examples)) == len(topic.examples)

    data = json.loads(json.dumps([t.to_json() for t in topics]))
    assert data[0]["remedy"] == "knowledge_gap"
    assert data[2]["top_sources"][0] == {"source": "account/password.md#reset", "count": 3}
    assert data[0]["stats"]["weak"] == 5

    text = render_text(topics)
    assert "3 topic(s) from 12 failure(s): 1 knowledge gap, 1 prompt/retrieval, 1 behaviour" in text
    assert "questions for the documentation team:" in text
    assert text.count("Can I get a refund in bitcoin?") >= 1
    assert "remedy: behaviour" in text and "remedy: prompt/retrieval" in text


def test_triage_since_and_limit(seeded):
    store, ids = seeded
    everything = triage(store, fake_embed)
    assert sum(t.count for t in everything) == 13  # the old XML export failure joins the export topic
    recent = triage(store, fake_embed, limit=4)  # the four most recent failures: the export topic
    assert [(t.count, t.interaction_ids) for t in recent] == [(4, ids["behaviour"])]
    assert triage(store, fake_embed, since=T0 + timedelta(days=1)) == []
    with pytest.raises(ValueError, match="limit"):
        triage(store, fake_embed, limit=0)
    with pytest.raises(ValueError, match="threshold"):
        triage(store, fake_embed, threshold=2)


def test_failures_after_a_correction_example_make_a_behaviour_topic(seeded):
    store, ids = seeded
    # The first wrong answer's correction went into the example bank; the two later failures happened anyway.
    first = store.get_interaction(ids["wrong"][0])
    store.add(Example(question=first.question, answer="The link is valid for 2 hours.", origin="correction",
                      interaction_id=first.id, created_at=first.created_at + timedelta(minutes=2)))
    topics = {t.interaction_ids[0]: t for t in triage(store, fake_embed, since=T0)}
    wrong = topics[ids["wrong"][0]]
    assert wrong.stats.after_fix == 2
    assert wrong.remedy == "behaviour"
    assert "example bank" in wrong.why


def test_a_correction_example_is_placed_by_its_question_when_its_interaction_is_not_in_view(seeded):
    store, ids = seeded
    store.add(Example(question="Password reset link lifetime", answer="2 hours.", origin="correction",
                      created_at=T0))  # before every failure of the topic
    store.add(Example(question="Password reset link lifetime", answer="2 hours.", origin="curated",
                      created_at=T0))  # curated examples are not fixes
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return fake_embed(texts)

    topics = {t.interaction_ids[0]: t for t in triage(store, embed, since=T0)}
    assert calls[1] == ["Password reset link lifetime"]
    assert topics[ids["wrong"][0]].stats.after_fix == 3
    assert topics[ids["wrong"][0]].remedy == "behaviour"
    assert topics[ids["gap"][0]].stats.after_fix == 0


def test_build_topics_and_render_with_nothing():
    assert build_topics([], np.zeros((0, 3))) == []
    assert render_text([]) == "No failures to triage.\n"


def test_embed_with_the_wrong_shape_is_refused(seeded):
    store, _ = seeded
    with pytest.raises(ValueError, match="embed returned shape"):
        triage(store, lambda texts: np.ones((len(texts) + 1, 4)))
