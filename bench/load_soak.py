#!/usr/bin/env python
"""16 concurrent streaming clients against `affinage serve` with the default model and default limits, for 60 s.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/load_soak.py [--clients 16] [--seconds 60] [--home DIR] [--no-write]

1. A fresh workspace (``--home``, default a new temporary folder) prepared through the CLI as ``make run`` does
   (ingest the demo knowledge base, import its examples), with no ``config.toml``: the default limits apply
   (``max_queue`` 8, ``rate_limit_per_minute`` 60 per key). Each client gets its own agent key, as 16 support
   agents would. The GGUF model is converted once beforehand, outside the server.
2. Starts ``affinage serve`` on a free loopback port (``serve_latency.Server``) and sends one warm-up request.
3. Every client streams golden-set questions back to back (raw SSE over httpx) for ``--seconds``; a 429 or 503 is
   honoured by sleeping its ``Retry-After`` and trying again.
4. Counts, per request: complete streams (HTTP 200, a final ``finish_reason`` of OpenAI's: "stop", "length" or
   "content_filter" when the output guard changed the answer, the ``affinage`` field, ``[DONE]``),
   truncated streams (HTTP 200 without all of those), refusals (429/503, with or without ``Retry-After``), 5xx and
   other failures. Samples the server's resident memory every 0.5 s from the end of the warm-up and compares the
   median of the first and the last fifth of the run.
5. Rewrites the ``bench:load_soak`` section of BENCHMARKS.md with computed PASS/FAIL lines.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _common import command_line, cpu_model, load_average, markers, nproc, publish
from serve_latency import EXAMPLES, FINISHED, KB, MemorySampler, Server, free_port, load_questions, run_cli

START, END = markers("load_soak")
RSS_GROWTH_LIMIT = 0.05  # "flat": the last fifth's median within 5% of the first fifth's
_BEGUN = time.monotonic()


def log(message: str) -> None:
    print(f"[load_soak {time.monotonic() - _BEGUN:6.0f}s] {message}", file=sys.stderr, flush=True)


class MemorySeries(MemorySampler):
    """The sampler of serve_latency.py, keeping every sample so the start and the end of a run can be compared."""

    def __init__(self, pid: int):
        super().__init__(pid)
        self.values: list[int] = []

    def rss(self) -> int | None:
        value = super().rss()
        if value is not None:
            self.values.append(value)
        return value


def prepare(home: Path, clients: int) -> list[str]:
    home.mkdir(parents=True, exist_ok=True)
    if (home / "config.toml").exists():
        raise SystemExit("load_soak: the workspace has a config.toml; this benchmark measures the default limits")
    run_cli(home, "ingest", str(KB))
    run_cli(home, "examples", "import", str(EXAMPLES))
    convert = ("import sys; from affinage.core.settings import load_settings; "
               "from affinage.core.model_files import resolve_model_path; resolve_model_path(load_settings(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", convert, str(home)], check=True, capture_output=True)
    from affinage.core.settings import load_settings
    from agent.service import auth
    from affinage.core.store import Store

    store = Store(load_settings(home).db_url)  # as `affinage keys create` does, without starting it 16 times
    stamp = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    keys = [auth.create_key(store, f"load-{stamp}-{i}", "agent") for i in range(clients)]
    store.close()
    return keys


def stream_once(client, url: str, key: str, question: str) -> dict:
    """One streamed request: its outcome ('complete', 'truncated', 'refused', '5xx', 'error') and timings."""
    import httpx

    begun = time.perf_counter()
    body = {"model": "default", "stream": True, "messages": [{"role": "user", "content": question}]}
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as response:
            if response.status_code != 200:
                response.read()
                outcome = "refused" if response.status_code in (429, 503) else (
                    "5xx" if response.status_code >= 500 else "error")
                return {"outcome": outcome, "status": response.status_code,
                        "retry_after": response.headers.get("Retry-After"), "s": time.perf_counter() - begun}
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as error:
        return {"outcome": "error", "status": None, "detail": f"{type(error).__name__}: {error}",
                "s": time.perf_counter() - begun}
    payloads = [json.loads(e) for e in events[:-1]] if events[-1:] == ["[DONE]"] else []
    finished = bool(payloads) and payloads[-1]["choices"][0]["finish_reason"] in FINISHED and "affinage" in payloads[-1]
    return {"outcome": "complete" if finished else "truncated", "status": 200, "s": time.perf_counter() - begun}


def drive(url: str, keys: list[str], seconds: float) -> list[dict]:
    import httpx

    questions = itertools.cycle(load_questions())
    lock, results = threading.Lock(), []
    deadline = time.monotonic() + seconds

    def client_loop(key: str) -> None:
        with httpx.Client(timeout=httpx.Timeout(300, connect=10)) as client:
            while time.monotonic() < deadline:
                with lock:
                    question = next(questions)
                result = stream_once(client, url, key, question)
                with lock:
                    results.append(result)
                if result["outcome"] == "refused":
                    time.sleep(float(result["retry_after"] or 1))

    threads = [threading.Thread(target=client_loop, args=(key,), daemon=True) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def section(info: dict, argv: list[str]) -> str:
    outcomes, rss = info["outcomes"], info["rss"]
    refusals = [r for r in info["results"] if r["outcome"] == "refused"]
    complete = [r["s"] for r in info["results"] if r["outcome"] == "complete"]
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    growth = (rss["last"] - rss["first"]) / rss["first"]
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(Counter(r["status"] for r in refusals).items())) or "none"
    checks = [
        (outcomes["5xx"] == 0, f"no 5xx: {outcomes['5xx']}"),
        (outcomes["truncated"] == 0, f"no truncated stream: {outcomes['truncated']}"),
        (outcomes["error"] == 0, f"no other failure (connection errors, other 4xx): {outcomes['error']}"),
        (all(r["retry_after"] for r in refusals),
         f"every refusal is a 429/503 with Retry-After: {len(refusals)} refusals ({statuses})"),
        (growth <= RSS_GROWTH_LIMIT, f"resident memory flat after warm-up: median {mib(rss['first'])} in the first "
         f"fifth, {mib(rss['last'])} in the last ({growth:+.1%}; limit +{RSS_GROWTH_LIMIT:.0%}), "
         f"peak {mib(rss['peak'])}"),
    ]
    return "\n".join([
        START, "## Load: concurrent streaming clients at the default limits (bench/load_soak.py)", "",
        f"`{command_line(__file__, argv)}` on {cpu_model()} ({nproc()} cores), load average "
        f"{info['load']:.1f} at the start; model {info['model']}, no config.toml (max_queue 8, 60 requests a minute "
        f"per key), {info['clients']} clients with a key each, {info['seconds']:.0f} s of traffic on loopback.", "",
        f"- requests: {len(info['results'])}; complete streams: {outcomes['complete']} "
        f"(median {statistics.median(complete):.1f} s, max {max(complete):.1f} s)" if complete else
        f"- requests: {len(info['results'])}; complete streams: 0",
        f"- memory samples: {rss['samples']} every 0.5 s after warm-up ({info['rss_method']})", "",
        "Targets (computed from the figures above):", "",
        *(f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in checks), END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--home", type=Path, help="workspace folder (default: a new temporary folder)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load = load_average() or 0.0
    home = args.home or Path(tempfile.mkdtemp(prefix="affinage-load-"))
    keys = prepare(home, args.clients)
    server = Server(home, free_port())
    try:
        health = server.start(timeout_s=300)
        log("warm-up request")
        import httpx

        with httpx.Client(timeout=300) as client:
            warm = stream_once(client, server.url, keys[0], load_questions()[0])
        if warm["outcome"] != "complete":
            raise SystemExit(f"load_soak: the warm-up request failed: {warm}\n{server.log_tail()}")
        sampler = MemorySeries(server.process.pid)
        sampler.start()
        log(f"{args.clients} clients for {args.seconds:.0f} s")
        results = drive(server.url, keys, args.seconds)
        sampler.stop()
        values = sampler.values
    finally:
        server.stop()
    fifth = max(1, len(values) // 5)
    info = {"results": results, "outcomes": Counter({"complete": 0, "truncated": 0, "5xx": 0, "error": 0,
                                                       **Counter(r["outcome"] for r in results)}),
            "rss": {"first": statistics.median(values[:fifth]), "last": statistics.median(values[-fifth:]),
                    "peak": sampler.peak(), "samples": len(values)},
            "rss_method": sampler.method, "model": health.get("model"), "load": load, "clients": args.clients,
            "seconds": args.seconds}
    for r in results:
        if r["outcome"] in ("5xx", "error", "truncated"):
            log(f"failure: {r}")
    text = section(info, sys.argv[1:])
    return publish(text, "load_soak", write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
