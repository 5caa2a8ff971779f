"""Drift checks for the gates: has traffic moved away from what the adapter was trained on, and do answers change?

All pure functions over arrays and plain dicts, so a gate report can be recomputed from stored embeddings and
answers. Input windows are sentence embeddings, one row per question; nothing here loads a model.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from affinage.core.refusal import is_refusal
from affinage.core.validate import in_range

_PERMUTATION_CHUNK = 128  # permutations scored per matrix product: bounds memory at chunk x pooled rows


@dataclass(frozen=True)
class DriftResult:
    """One two-sample test: ``drifted`` when the permutation p-value falls below ``alpha``."""

    statistic: float  # unbiased squared MMD; can be slightly negative when the windows match
    p_value: float
    n_reference: int
    n_recent: int
    drifted: bool
    alpha: float
    bandwidth: float  # RBF sigma from the median heuristic, recorded so the test can be reproduced

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TopicDrift:
    """One topic's share of each window, and its MMD test when both windows hold enough rows of it."""

    share_reference: float
    share_recent: float
    n_reference: int
    n_recent: int
    test: DriftResult | None  # None: too few rows on one side to test (a new or vanished topic)

    @property
    def share_shift(self) -> float:
        return self.share_recent - self.share_reference

    def to_json(self) -> dict:
        return {"share_reference": self.share_reference, "share_recent": self.share_recent,
                "share_shift": self.share_shift, "n_reference": self.n_reference, "n_recent": self.n_recent,
                "test": None if self.test is None else self.test.to_json()}


# --- validation ---------------------------------------------------------------------------------------------------

def _matrix(name: str, value, min_rows: int) -> np.ndarray:
    """``value`` as a finite 2-D float64 array with at least ``min_rows`` rows, else a ValueError naming it."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dimensions), got shape {array.shape}")
    if array.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {array.shape[0]}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has rows of dimension 0")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has {len(bad)} non-finite values (first at row {bad[0][0]})")
    return array


def _pair(reference, recent, min_rows: int, names: tuple[str, str] = ("reference", "recent")):
    a, b = _matrix(names[0], reference, min_rows), _matrix(names[1], recent, min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {names[0]} rows have {a.shape[1]} values, {names[1]} rows {b.shape[1]}")
    return a, b


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --- MMD ----------------------------------------------------------------------------------------------------------

def _squared_distances(z: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", z, z)
    d2 = norms[:, None] + norms[None, :] - 2.0 * (z @ z.T)
    np.fill_diagonal(d2, 0.0)
    return np.maximum(d2, 0.0)  # rounding can push identical pairs a hair below zero


def _median_bandwidth(d2: np.ndarray) -> float:
    """Median distance between distinct pooled rows; falls back when most rows coincide (median 0)."""
    distances = np.sqrt(d2[np.triu_indices_from(d2, k=1)])
    sigma = float(np.median(distances))
    if sigma > 0:
        return sigma
    positive = distances[distances > 0]
    return float(positive.mean()) if positive.size else 1.0  # all rows equal: any bandwidth gives MMD 0


def _mmd_from_masks(k0: np.ndarray, masks: np.ndarray, m: int, n: int) -> np.ndarray:
    """Unbiased MMD^2 for each row of ``masks`` (1 = reference) over a kernel ``k0`` with a zeroed diagonal.

    With a the reference mask, r the row sums of k0 and T their total: sum Kxx = a'Ka, sum Kxy = a'r - a'Ka and
    sum Kyy = T - 2a'r + a'Ka, so one matrix product scores a whole chunk of permutations.
    """
    row_sums = k0.sum(axis=1)
    total = row_sums.sum()
    xx = np.einsum("pi,pi->p", masks @ k0, masks)
    ar = masks @ row_sums
    xy = ar - xx
    yy = total - 2.0 * ar + xx
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def mmd_test(reference: np.ndarray, recent: np.ndarray, permutations: int = 500, seed: int = 0,
             alpha: float = 0.05) -> DriftResult:
    """Kernel two-sample test: do the two windows of embeddings come from the same distribution?

    Unbiased squared MMD with an RBF kernel exp(-|x-y|^2 / 2 sigma^2), sigma the median pairwise distance of the
    pooled rows. The p-value is (1 + permuted statistics >= observed) / (1 + permutations): never 0, exact in
    level. Memory grows with the square of the pooled rows: subsample windows beyond a few thousand rows.
    """
    x, y = _pair(reference, recent, min_rows=2)
    permutations = _positive_int("permutations", permutations)
    in_range("alpha", alpha, 0.0, 1.0, open_low=True, open_high=True)
    m, n = len(x), len(y)
    d2 = _squared_distances(np.vstack([x, y]))
    sigma = _median_bandwidth(d2)
    k0 = np.exp(-d2 / (2.0 * sigma * sigma))
    np.fill_diagonal(k0, 0.0)

    observed_mask = np.zeros((1, m + n))
    observed_mask[0, :m] = 1.0
    statistic = float(_mmd_from_masks(k0, observed_mask, m, n)[0])
    rng = np.random.default_rng(seed)
    tolerance = 1e-12 * max(1.0, abs(statistic))  # a permutation equal to the observed split counts as extreme
    extreme = 0
    for start in range(0, permutations, _PERMUTATION_CHUNK):
        size = min(_PERMUTATION_CHUNK, permutations - start)
        ranks = rng.random((size, m + n)).argsort(axis=1).argsort(axis=1)  # a uniform permutation per row
        masks = (ranks < m).astype(np.float64)  # a uniformly random reference subset of size m
        extreme += int((_mmd_from_masks(k0, masks, m, n) >= statistic - tolerance).sum())
    p_value = (1 + extreme) / (1 + permutations)
    return DriftResult(statistic=statistic, p_value=p_value, n_reference=m, n_recent=n,
                       drifted=p_value < alpha, alpha=float(alpha), bandwidth=sigma)


# --- domain classifier --------------------------------------------------------------------------------------------

def domain_classifier_auc(reference: np.ndarray, recent: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated ROC AUC of a logistic regression telling recent rows from reference rows.

    0.5 means the windows are indistinguishable; near 1 they separate cleanly. A complement to the MMD test that
    says how separable the windows are rather than whether a difference exists. Mean AUC over stratified folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = _positive_int("folds", folds)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    x, y = _pair(reference, recent, min_rows=folds)
    features = np.vstack([x, y])
    labels = np.r_[np.zeros(len(x)), np.ones(len(y))]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, features, labels, cv=splitter, scoring="roc_auc")))


# --- per topic ----------------------------------------------------------------------------------------------------

def per_topic_drift(reference: np.ndarray, recent: np.ndarray, reference_topics: Sequence[str],
                    recent_topics: Sequence[str], min_rows: int = 5, **kw) -> dict[str, TopicDrift]:
    """Every topic seen in either window: its share of each, and an MMD test where both hold ``min_rows`` rows.

    A topic present only recently reports share_reference 0 and no test: that is a share shift, not a
    distribution test. ``kw`` goes to :func:`mmd_test` (permutations, seed, alpha). Topics are tested one by one
    with no multiple-testing correction: pass a smaller ``alpha`` when many topics are checked.
    """
    x, y = _pair(reference, recent, min_rows=1)
    min_rows = _positive_int("min_rows", min_rows)
    if min_rows < 2:
        raise ValueError(f"min_rows must be at least 2 (the MMD test needs two rows a side), got {min_rows}")
    for name, rows, topics in (("reference", x, reference_topics), ("recent", y, recent_topics)):
        if len(topics) != len(rows):
            raise ValueError(f"{name}_topics has {len(topics)} labels for {len(rows)} {name} rows")
    ref_labels, rec_labels = np.asarray(reference_topics, dtype=object), np.asarray(recent_topics, dtype=object)
    ref_counts, rec_counts = Counter(reference_topics), Counter(recent_topics)
    result = {}
    for topic in sorted(set(ref_counts) | set(rec_counts), key=str):
        a, b = ref_counts.get(topic, 0), rec_counts.get(topic, 0)
        test = None
        if a >= min_rows and b >= min_rows:
            test = mmd_test(x[ref_labels == topic], y[rec_labels == topic], **kw)
        result[topic] = TopicDrift(share_reference=a / len(x), share_recent=b / len(y), n_reference=a,
                                   n_recent=b, test=test)
    return result


# --- answers ------------------------------------------------------------------------------------------------------

def _answer_figures(name: str, answers: list[dict]) -> dict[str, float]:
    if not answers:
        raise ValueError(f"{name} has no answers to compare")
    words = refusals = cited = 0
    for i, item in enumerate(answers):
        text = item.get("answer") if isinstance(item, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] needs an 'answer' string, got {item!r:.80}")
        citations = item.get("citations") or []
        if not isinstance(citations, (list, tuple)):
            raise ValueError(f"{name}[{i}]['citations'] must be a list, got {citations!r:.80}")
        words += len(text.split())
        refusals += is_refusal(text)
        cited += bool(citations)
    count = len(answers)
    return {"answer_words": words / count, "refusal_rate": refusals / count, "citation_rate": cited / count}


def output_drift(active_answers: list[dict], candidate_answers: list[dict]) -> dict:
    """How the candidate's answers differ from the active model's: length in words, refusals, citations.

    Each figure comes as ``{"active", "candidate", "difference"}`` with difference = candidate - active, so a
    gate can bound it either way (a candidate that stops citing or starts refusing shows a negative/positive
    difference). Answers are dicts with ``answer: str`` and ``citations: list`` (missing counts as none).
    """
    active = _answer_figures("active_answers", active_answers)
    candidate = _answer_figures("candidate_answers", candidate_answers)
    report: dict = {key: {"active": active[key], "candidate": candidate[key],
                          "difference": candidate[key] - active[key]} for key in active}
    report["n_active"], report["n_candidate"] = len(active_answers), len(candidate_answers)
    return report


# --- stale training rows ------------------------------------------------------------------------------------------

def _unit_rows(name: str, rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{name} row {zero[0]} is all zeros: cosine similarity is undefined")
    return rows / norms[:, None]


def stale_training_rows(train_embeddings: np.ndarray, recent_embeddings: np.ndarray,
                        threshold: float = 0.5) -> list[int]:
    """Indices of training rows whose nearest recent question has cosine similarity below ``threshold``.

    Training data nobody asks about any more: candidates to drop or down-weight before the next run. Rows are
    normalised here, so raw vectors work too.
    """
    if not isinstance(threshold, numbers.Real) or not -1.0 <= threshold <= 1.0:  # NaN fails the range too
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
    train, recent = _pair(train_embeddings, recent_embeddings, min_rows=1,
                          names=("train_embeddings", "recent_embeddings"))
    train, recent = _unit_rows("train_embeddings", train), _unit_rows("recent_embeddings", recent)
    nearest = np.concatenate([(train[i:i + 1024] @ recent.T).max(axis=1) for i in range(0, len(train), 1024)])
    return [int(i) for i in np.flatnonzero(nearest < threshold)]
