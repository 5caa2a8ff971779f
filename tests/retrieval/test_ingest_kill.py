"""An ingest killed with SIGKILL at each step of writing a snapshot leaves a usable index: the previous one until the
new snapshot is live, then the new one; the next ingest finishes the job and clears what the killed one left, keeping
only the live snapshot and the one live before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.index import VectorIndex
from retrieval.ingest import ingest
from retrieval.retriever import IndexRetriever
from tests.agent.light_server import HashEmbeddings

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]
INGEST = """
import os, shutil, signal, sys
from pathlib import Path
import faiss
import retrieval.index as index
from retrieval.ingest import ingest
from tests.agent.light_server import HashEmbeddings
step = sys.argv[3]

def kill_after(name, function):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

class Embeddings(HashEmbeddings):
    def encode(self, texts, progress=False):
        vectors = super().encode(texts, progress)
        if step == "embedded":
            os.kill(os.getpid(), signal.SIGKILL)
        return vectors

faiss.write_index = kill_after("faiss-written", faiss.write_index)
os.rename = kill_after("snapshot-renamed", os.rename)
index.atomic_write_text = kill_after("current-written", index.atomic_write_text)
shutil.rmtree = kill_after("pruning", shutil.rmtree)
ingest(Path(sys.argv[1]), [Path(sys.argv[2])], Embeddings(), 700, 120)
"""


def texts(index_dir: Path) -> set[str]:
    return {chunk.text for chunk in VectorIndex.open(index_dir).chunks}


@pytest.mark.parametrize("step, live", [("embedded", "old"), ("faiss-written", "old"), ("snapshot-renamed", "old"),
                                        ("current-written", "new"), ("pruning", "new")])
def test_a_kill_at_each_step_of_an_ingest_leaves_a_usable_index(tmp_path, kb, step, live):
    index_dir, embeddings = tmp_path / "index", HashEmbeddings()
    ingest(index_dir, [kb], embeddings, 700, 120)
    (kb / "sso.html").unlink()  # a second snapshot, so that the killed ingest's pruning has one to drop
    ingest(index_dir, [kb], embeddings, 700, 120)
    (kb / "billing" / "refunds.md").write_text("# Refunds\n\n## Annual plan refunds\n\nAnnual plans are refundable "
                                               "within 14 days of purchase.\n")
    old = texts(index_dir)
    ingest(tmp_path / "expected", [kb], embeddings, 700, 120)
    new = texts(tmp_path / "expected")
    assert old != new

    result = subprocess.run([sys.executable, "-c", INGEST, str(index_dir), str(kb), step], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr[-2000:]

    assert texts(index_dir) == (old if live == "old" else new)
    retriever = IndexRetriever(index=VectorIndex.open(index_dir), embeddings=embeddings, k=2)
    assert retriever.invoke("annual plan refund")[0].metadata["source"] == "billing/refunds.md#annual-plan-refunds"

    ingest(index_dir, [kb], embeddings, 700, 120)  # run again: it completes and clears what the killed run left
    assert texts(index_dir) == new
    live = (index_dir / "CURRENT").read_text().strip()
    (before,) = [p for p in index_dir.iterdir() if p.is_dir() and p.name != live]  # no litter, one snapshot kept
    assert {json.loads(line)["text"] for line in (before / "chunks.jsonl").read_text().splitlines()} == old
