"""Group question vectors into topics: scikit-learn's agglomerative clustering on cosine similarity.

Pure: vectors in, labels out. The distance matrix is precomputed (1 - cosine similarity) rather than left to
``metric="cosine"``, because scikit-learn refuses zero rows there and an embedding may produce one: here a zero row is
simply similar to nothing (similarity 0).

Limits: the n×n distance matrix, the condensed copy scipy links from and its index arrays peak at about 200 MB for
n = 3000 (under a second), so ``cluster`` refuses more than ``MAX_CLUSTER_INPUT`` rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from affinage.core.validate import in_range

LINKAGES = ("average", "complete")
MAX_CLUSTER_INPUT = 3000


def check_threshold(value: float) -> float:
    """``value`` as a float similarity threshold in [-1, 1]; the range cosine similarity can take."""
    return in_range("threshold", value, -1.0, 1.0)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so that dot products are cosine similarities; zero rows stay zero."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cluster(vectors: np.ndarray, threshold: float, linkage: str = "average") -> list[int]:
    """Cluster labels for the rows of ``vectors`` (n, d); two clusters merge while their similarity is at least
    ``threshold``.

    ``average`` linkage scores two clusters by the mean cosine similarity of their cross pairs, ``complete`` by the
    least similar pair (tighter topics). Labels are numbered by cluster size, largest first, then by the cluster's
    first row, so label 0 is the biggest topic and the result does not depend on scikit-learn's numbering.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, got {linkage!r}")
    threshold = check_threshold(threshold)
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (n, d), got shape {x.shape}")
    n = x.shape[0]
    if n > MAX_CLUSTER_INPUT:
        raise ValueError(f"cannot cluster {n} vectors: at most {MAX_CLUSTER_INPUT} (keep the most recent ones)")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinite values")
    if n < 2:  # scikit-learn needs two rows to build a tree
        return [0] * n
    x = normalise(x)
    # Similarities turned into distances in place (one n×n matrix, not two). Not clipped to [0, 2]: a rounding
    # error just past ±1 must keep its side of the threshold, and scikit-learn accepts the tiny negative values.
    distances = x @ x.T
    np.subtract(1.0, distances, out=distances)
    np.fill_diagonal(distances, 0.0)
    # scikit-learn keeps apart clusters at distance >= distance_threshold; similarity >= threshold must merge, so
    # the boundary distance 1 - threshold itself is let in by moving the cut one float above it.
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage=linkage,
                                    distance_threshold=float(np.nextafter(1.0 - threshold, np.inf)))
    return _numbered_by_size(model.fit_predict(distances).tolist())


def _numbered_by_size(labels: list[int]) -> list[int]:
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        groups.setdefault(label, []).append(row)
    ordered = sorted(groups.values(), key=lambda rows: (-len(rows), rows[0]))
    out = [0] * len(labels)
    for label, rows in enumerate(ordered):
        for row in rows:
            out[row] = label
    return out
