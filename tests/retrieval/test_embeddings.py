"""The sentence embedder embeds a text once however often it is asked for, and keeps a bounded number of vectors."""

from collections import OrderedDict

import numpy as np


def test_a_text_is_embedded_once_and_the_cache_is_bounded(embeddings, monkeypatch):
    embedder, embedded = embeddings, []
    encode = embedder.model.encode
    monkeypatch.setattr(embedder.model, "encode", lambda texts, **kw: embedded.append(list(texts)) or encode(texts, **kw))
    monkeypatch.setattr(embedder, "cached", 3)
    monkeypatch.setattr(embedder, "_vectors", OrderedDict())

    first = embedder.encode(["How do I reset my password?", "Refunds take 5 days.", "How do I reset my password?"])
    assert embedded == [["How do I reset my password?", "Refunds take 5 days."]]  # a repeat within a call: once
    assert np.array_equal(first[0], first[2]) and first.shape == (3, embedder.dim)
    again = embedder.encode(["Refunds take 5 days.", "Exports are CSV files."])
    assert embedded[1:] == [["Exports are CSV files."]]  # only the new text reaches the model
    assert np.array_equal(again[0], first[1])
    alone = encode(["Refunds take 5 days."], normalize_embeddings=True, convert_to_numpy=True)[0]
    assert np.allclose(again[0], alone, atol=1e-5)  # the same vector the model gives the text alone

    embedder.encode(["A fourth sentence."])  # three kept: the oldest, the password question, is dropped
    embedder.encode(["How do I reset my password?"])
    assert embedded[-1] == ["How do I reset my password?"] and len(embedder._vectors) == 3
    again[0][:] = 0  # a caller's array is its own
    assert embedder.encode(["Refunds take 5 days."]).any()
