"""Triage: group recent failures into topics and suggest, for each, the cheapest remedy that can work.

A *failure* is a logged interaction with at least one failure signal (``agent.detectors``). Its question is embedded,
similar questions are clustered into *topics* (``clustering``: scikit-learn's agglomerative clustering on cosine
similarity), and each topic (``topics``) gets counts, its most central questions, the sources retrieval kept
returning, and a remedy (``remedies``). Only ``reading`` touches the database; ``report`` renders the text.
"""

from agent.triage.clustering import MAX_CLUSTER_INPUT, cluster
from agent.triage.failures import Failure, Fix
from agent.triage.reading import triage
from agent.triage.remedies import (
    REMEDIES,
    RemedyRules,
    TopicStats,
    suggest_remedy,
    topic_stats,
)
from agent.triage.report import render_text
from agent.triage.topics import Topic, build_topics, topic_label

__all__ = [
    "MAX_CLUSTER_INPUT", "REMEDIES", "Failure", "Fix", "RemedyRules", "Topic", "TopicStats", "build_topics", "cluster",
    "render_text", "suggest_remedy", "topic_label", "topic_stats", "triage",
]
