from retrieval.chunking import chunk_document, split_text
from retrieval.loaders import Document, Section


def test_split_text_respects_limit_and_keeps_every_word():
    text = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(10))
    pieces = split_text(text, max_chars=300, overlap_chars=0)
    assert all(len(p) <= 300 for p in pieces)
    assert " ".join(pieces).split().count("word") == 400


def test_split_text_overlaps_consecutive_pieces():
    text = "\n\n".join(f"Sentence number {i} is here." for i in range(30))
    pieces = split_text(text, max_chars=120, overlap_chars=40)
    assert len(pieces) > 1
    assert all(len(p) <= 120 for p in pieces)
    assert pieces[1].split()[0] in pieces[0]


def test_hard_wraps_a_word_longer_than_the_limit():
    pieces = split_text("x" * 250, max_chars=100, overlap_chars=0)
    assert [len(p) for p in pieces] == [100, 100, 50]


def test_chunks_carry_citable_sources_and_context():
    document = Document("Refunds", [Section("Annual plans", "annual-plans", "Thirty days.")])
    (chunk,) = chunk_document("billing/refunds.md", document, 500, 50)
    assert chunk.source == "billing/refunds.md#annual-plans"
    assert chunk.text.startswith("Refunds — Annual plans\n")
    assert chunk_document("billing/refunds.md", document, 500, 50)[0].id == chunk.id
