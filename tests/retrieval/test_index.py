import numpy as np
import pytest

from retrieval.index import VectorIndex
from retrieval.ingest import ingest
from retrieval.loaders import UnsupportedFileError
from retrieval.retriever import IndexRetriever


def run(home, paths, embeddings):
    return ingest(home / "index", paths, embeddings, max_chars=500, overlap_chars=50)


def test_ingest_then_retrieve_with_sources(tmp_path, kb, embeddings):
    report = run(tmp_path, [kb], embeddings)
    assert sorted(report.added) == ["account/passwords.md", "billing/refunds.md", "sso.html"]
    retriever = IndexRetriever(index=VectorIndex.open(tmp_path / "index"), embeddings=embeddings, k=2)
    docs = retriever.invoke("How long does the password reset email link stay valid?")
    assert docs[0].metadata["source"] == "account/passwords.md#reset-your-password"
    assert docs[0].metadata["score"] > docs[1].metadata["score"]
    assert retriever.invoke("Where do I paste the Okta metadata?")[0].metadata["source"] == "sso.html#okta-setup"


def test_reingest_embeds_only_changed_files_and_drops_deleted(tmp_path, kb, embeddings):
    run(tmp_path, [kb], embeddings)
    again = run(tmp_path, [kb], embeddings)
    assert again.embedded == 0 and len(again.unchanged) == 3

    (kb / "billing" / "refunds.md").write_text("# Refunds\n\n## Annual plan refunds\n\nNow 60 days.\n")
    (kb / "sso.html").unlink()
    (kb / "notes.xlsx").write_bytes(b"PK")
    report = run(tmp_path, [kb], embeddings)
    assert report.updated == ["billing/refunds.md"]
    assert report.removed == ["sso.html"]
    assert report.unchanged == ["account/passwords.md"]
    assert report.skipped == [("notes.xlsx", "unsupported type .xlsx")]
    assert report.embedded == 1
    index = VectorIndex.open(tmp_path / "index")
    assert {c.path for c in index.chunks} == {"account/passwords.md", "billing/refunds.md"}
    assert any("60 days" in c.text for c in index.chunks)
    assert len(index.vectors) == len(index.chunks) == index.faiss_index.ntotal


def test_single_unsupported_file_or_missing_path_changes_nothing(tmp_path, kb, embeddings):
    run(tmp_path, [kb], embeddings)
    before = (tmp_path / "index" / "CURRENT").read_text()
    bad = tmp_path / "data.xlsx"
    bad.write_bytes(b"PK")
    with pytest.raises(UnsupportedFileError, match="xlsx"):
        run(tmp_path, [kb / "billing", bad], embeddings)
    with pytest.raises(FileNotFoundError, match="nope"):
        run(tmp_path, [tmp_path / "nope"], embeddings)
    assert (tmp_path / "index" / "CURRENT").read_text() == before


def test_unparseable_file_is_reported_and_others_still_ingested(tmp_path, kb, embeddings):
    (kb / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    report = run(tmp_path, [kb], embeddings)
    assert [path for path, _ in report.failed] == ["broken.pdf"]
    assert len(report.added) == 3


def test_failed_ingest_leaves_previous_index_usable(tmp_path, kb, embeddings, monkeypatch):
    run(tmp_path, [kb], embeddings)
    (kb / "billing" / "refunds.md").write_text("# Refunds\n\n## Changed\n\nChanged text.\n")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("faiss.write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, [kb], embeddings)
    index = VectorIndex.open(tmp_path / "index")
    assert any("30 days" in c.text for c in index.chunks)
    assert not [p for p in (tmp_path / "index").iterdir() if p.name.startswith(".tmp-")]


def test_changing_the_embedder_reembeds_everything(tmp_path, kb, embeddings):
    run(tmp_path, [kb], embeddings)
    index = VectorIndex.open(tmp_path / "index")
    index.meta["embedder"] = "some-other-model"
    index.save(tmp_path / "index")
    report = run(tmp_path, [kb], embeddings)
    assert report.embedded == len(VectorIndex.open(tmp_path / "index").chunks)


def test_ingest_embeds_every_quotable_sentence_once_and_quoting_reads_them_from_the_index(tmp_path, kb, embeddings,
                                                                                          monkeypatch):
    from affinage.core.extraction import select_quotes
    from affinage.core.prompts import passage_embedder
    from retrieval.ingest import quotable_sentences

    report = run(tmp_path, [kb], embeddings)
    index = VectorIndex.open(tmp_path / "index")
    sentences = list(dict.fromkeys(s for chunk in index.chunks for s in quotable_sentences(chunk)))
    assert "Monthly plans are not refunded." in sentences
    assert list(index.sentences) == sentences and report.sentences_embedded == len(sentences)
    assert np.allclose(index.sentence_vectors, embeddings.encode(sentences), atol=1e-5)

    retriever = IndexRetriever(index=index, embeddings=embeddings, k=2)
    question = "How long does the password reset email link stay valid?"
    docs = retriever.invoke(question)
    asked: list[str] = []
    encode = embeddings.encode
    monkeypatch.setattr(embeddings, "encode", lambda texts, progress=False: asked.extend(texts) or encode(texts))
    quotes = select_quotes(question, docs, passage_embedder(retriever), n=1, min_similarity=0.3)
    assert [q.sentence for q in quotes] == ["Click Forgot password on the sign-in page; the reset link expires after "
                                            "2 hours."]
    assert asked == [question]  # the passages' sentences came from the index


def test_reingest_embeds_only_new_sentences_and_upgrades_an_index_without_them(tmp_path, kb, embeddings):
    import json

    run(tmp_path, [kb], embeddings)
    (kb / "billing" / "refunds.md").write_text("# Refunds\n\n## Annual plan refunds\n\nAnnual plans are refundable "
                                               "within 60 days of purchase.\n")
    report = run(tmp_path, [kb], embeddings)
    index = VectorIndex.open(tmp_path / "index")
    assert report.sentences_embedded == 1
    assert "Annual plans are refundable within 60 days of purchase." in index.sentences
    assert "Monthly plans are not refunded." not in index.sentences  # its page changed: gone with it

    live = tmp_path / "index" / (tmp_path / "index" / "CURRENT").read_text().strip()
    for name in ("sentences.json", "sentences.npy"):  # as an index written before sentences were
        (live / name).unlink()
    meta = json.loads((live / "meta.json").read_text())
    del meta["sentences"]
    (live / "meta.json").write_text(json.dumps(meta))
    old = VectorIndex.open(tmp_path / "index")
    assert old.sentences == {} and len(old.chunks) == len(index.chunks)
    upgraded = run(tmp_path, [kb], embeddings)
    assert upgraded.embedded == 0 and upgraded.sentences_embedded == len(index.sentences)
    assert set(VectorIndex.open(tmp_path / "index").sentences) == set(index.sentences)
