"""The triage clustering is scikit-learn's, cut where today's rule cuts: similarity >= threshold merges."""

import math

import numpy as np
import pytest

import agent.triage.clustering as clustering
from agent.triage import cluster


def angle(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Group A at 0° and 10°, group B at 90° and 100°, an outlier at 225°; A and B interleaved in the input.
VECTORS = np.array([angle(0), angle(90), angle(225), angle(10), angle(100)])


def test_two_tight_groups_and_an_outlier_through_scikit_learn(monkeypatch):
    made = []

    class Spy(clustering.AgglomerativeClustering):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(clustering, "AgglomerativeClustering", Spy)
    # Within a group the similarity is cos 10° = 0.985; A–B average: (cos 90° + cos 100° + cos 80° + cos 90°) / 4 = 0.
    assert cluster(VECTORS, 0.9) == [0, 1, 2, 0, 1]  # equal sizes: the group seen first gets label 0
    assert made == [{"n_clusters": None, "metric": "precomputed", "linkage": "average",
                     "distance_threshold": pytest.approx(1 - 0.9)}]
    cos10 = math.cos(math.radians(10))
    assert cluster(VECTORS, cos10 - 1e-9) == [0, 1, 2, 0, 1]
    assert cluster(VECTORS, cos10 + 1e-9) == [0, 1, 2, 3, 4]
    assert cluster(VECTORS, -0.01) == [0, 0, 1, 0, 0]
    # The outlier to A ∪ B, averaged: (cos 225° + cos 215° + cos 135° + cos 125°) / 4 = -0.7017; the least similar
    # pair (complete linkage) is cos 215° = -0.8192.
    assert cluster(VECTORS, -0.70) == [0, 0, 1, 0, 0]
    assert cluster(VECTORS, -0.71) == [0, 0, 0, 0, 0]
    assert cluster(VECTORS, -0.71, linkage="complete") == [0, 0, 1, 0, 0]
    assert cluster(VECTORS, -0.82, linkage="complete") == [0, 0, 0, 0, 0]


def test_a_similarity_equal_to_the_threshold_merges():
    orthogonal = np.array([[1.0, 0.0], [0.0, 1.0]])  # similarity exactly 0
    assert cluster(orthogonal, 0.0) == [0, 0]
    assert cluster(orthogonal, 1e-12) == [0, 1]  # (1 - threshold keeps about 16 digits: not the smallest float)
    assert cluster(np.array([[1.0, 0.0], [-1.0, 0.0]]), -1.0) == [0, 0]  # opposite: distance 2, the widest cut
    assert cluster(np.array([[2.0, 0.0], [1.0, 0.0]]), 1.0) == [0, 0]  # identical directions: distance 0


def test_a_zero_row_is_similar_to_nothing():
    # scikit-learn's own metric="cosine" refuses zero rows; here a zero row has similarity 0 with every row.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1]])
    assert cluster(x, 0.5) == [1, 0, 0]
    assert cluster(x, 0.0) == [0, 0, 0]
