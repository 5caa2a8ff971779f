#!/usr/bin/env python
"""Streaming latency, throughput and memory of `affinage serve` under 1, 4 and 16 concurrent clients, with
batched generation on (the default) and off, side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_latency.py [--levels 1,4,16]
        [--requests-per-level 10,12,16] [--max-tokens N] [--home DIR] [--modes batched,alone]

1. Prepares a workspace (``--home``, default a new temporary folder) through the
   CLI, the way ``make run`` does: ``affinage ingest affinage/demo/kb``,
   ``affinage examples import affinage/demo/examples.jsonl`` (when the bank is
   empty), and a ``config.toml`` with a high ``rate_limit_per_minute`` and
   ``prompt_tokens_per_minute``, a queue deadline of an hour, and ``max_queue``
   and ``max_in_flight_per_key`` >= the largest level (every client uses one key,
   standing in for many agents), so that concurrent clients are queued rather
   than refused. The bundled GGUF model is converted to safetensors in a
   separate process first, so the server's memory is that of serving, not of
   the one-time conversion. ``affinage keys create --role agent`` makes a key.
2. Starts ``affinage --home HOME serve --host 127.0.0.1 --port FREE_PORT`` as a
   subprocess (its output goes to ``HOME/serve.log``) and waits for /healthz.
3. Sends one warm-up request, then for each level N starts N client threads at
   once; each uses the official ``openai`` SDK (``stream=True``, model
   ``default``, ``max_retries=0``) and sends its share of the level's requests
   back to back. Questions are the demo golden set (every line has a source,
   so retrieval is confident and the model gets a full RAG prompt), in order,
   cycling.
4. Per request: time to first token (request sent -> first non-empty content
   delta, queueing included), gaps between consecutive content chunks, total
   time, tokens from the final usage, and whether the stream ended normally
   with a finish_reason ("stop", "length", or "content_filter" when the output
   guard changed the answer), the ``affinage`` extra field and ``[DONE]``.
5. Samples the server's resident memory every 0.5 s (psutil, else
   /proc/PID/status) and reads its high-water mark (VmHWM).
6. Steps 2-5 run once per mode: ``batched_generation = true`` (concurrent
   answers generated together) and ``false`` (one at a time), each on a fresh
   server over the same workspace.
7. Rewrites the ``bench:serve_latency`` section of BENCHMARKS.md, with a
   computed pass/fail line for each target of the issue (judged on the batched
   mode), and always stops the server.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import itertools
import json
import math
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import BENCHMARKS, ROOT, command_line, cpu_model, load_average, markers, memory_gib, nproc, update_section

KB = ROOT / "affinage" / "demo" / "kb"
GOLDEN = ROOT / "affinage" / "demo" / "golden.jsonl"
EXAMPLES = ROOT / "affinage" / "demo" / "examples.jsonl"

START, END = markers("serve_latency")

DEFAULT_LEVELS = (1, 4, 16)
DEFAULT_REQUESTS = {1: 10, 4: 12, 16: 16}  # a level not listed here gets 2 requests per client
RATE_LIMIT_PER_MINUTE = 100_000
PROMPT_TOKENS_PER_MINUTE = 100_000_000
QUEUE_TIMEOUT_SECONDS = 3600.0
MIN_MAX_QUEUE = 32

MODES = {"batched": True, "alone": False}  # mode name -> batched_generation
FINISHED = ("stop", "length", "content_filter")  # OpenAI's reasons a whole answer ends with (the guard's included)

# The targets (issue 20), judged on the batched mode.
TTFT_P95_TARGETS_S = {1: 1.2, 4: 3.0}  # clients -> p95 time to first token
THROUGHPUT_LEVEL, THROUGHPUT_RATIO = 16, 4.0  # aggregate tokens/s at 16 clients over that at 1
PEAK_RSS_TARGET_BYTES = int(1.5 * 2**30)

GIB = 2**30


_BEGUN = time.monotonic()


def log(message: str) -> None:
    print(f"[serve_latency {time.monotonic() - _BEGUN:6.0f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the workspace


def affinage_command() -> list[str]:
    script = Path(sys.executable).parent / "affinage"
    return [str(script)] if script.exists() else [sys.executable, "-m", "affinage.cli"]


def run_cli(home: Path, *args: str) -> str:
    """Run one `affinage` command; its stdout, or exit with its output when it fails."""
    command = [*affinage_command(), "--home", str(home), *args]
    log("running: " + shlex.join(command))
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"serve_latency: `{shlex.join(command)}` failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise SystemExit(f"serve_latency: cannot rewrite config.toml value {value!r}; use a fresh --home")


def write_config(home: Path, max_queue: int, batched: bool = True) -> dict:
    """Keep what an existing config.toml sets; raise the per-key limits and the queue so that clients, which share
    one key, wait instead of failing; set the mode's ``batched_generation``."""
    path = home / "config.toml"
    config = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config["batched_generation"] = batched
    config["rate_limit_per_minute"] = max(int(config.get("rate_limit_per_minute", 0)), RATE_LIMIT_PER_MINUTE)
    config["prompt_tokens_per_minute"] = max(int(config.get("prompt_tokens_per_minute", 0)), PROMPT_TOKENS_PER_MINUTE)
    config["max_queue"] = max(int(config.get("max_queue", 0)), max_queue)
    config["max_in_flight_per_key"] = max(int(config.get("max_in_flight_per_key", 0)), max_queue)
    # The queue deadline's default (30 s) refuses a third of 16 clients' requests with 503: measure the wait instead.
    config["queue_timeout_seconds"] = max(float(config.get("queue_timeout_seconds", 0)), QUEUE_TIMEOUT_SECONDS)
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in config.items()), encoding="utf-8")
    return config


def prepare_workspace(home: Path, max_queue: int) -> tuple[dict, str]:
    home.mkdir(parents=True, exist_ok=True)
    config = write_config(home, max_queue)
    log(f"config.toml: {config}")
    run_cli(home, "ingest", str(KB))
    listed = run_cli(home, "examples", "list", "--json").strip().splitlines()
    if not json.loads(listed[-1] if listed else "[]"):
        run_cli(home, "examples", "import", str(EXAMPLES))
    # Convert the bundled GGUF once, outside the server, so its peak memory is that of serving.
    convert = ("import sys; from affinage.core.settings import load_settings; from affinage.core.model_files import resolve_model_path; "
               "print(resolve_model_path(load_settings(sys.argv[1])))")
    log("converting the default model if needed")
    done = subprocess.run([sys.executable, "-c", convert, str(home)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"serve_latency: model conversion failed:\n{done.stderr[-3000:]}")
    name = f"bench-serve-latency-{dt.datetime.now():%Y%m%d%H%M%S}-{os.getpid()}"
    key = run_cli(home, "keys", "create", "--role", "agent", "--name", name).strip().splitlines()[-1].strip()
    if not key or " " in key:
        raise SystemExit(f"serve_latency: `affinage keys create` printed no key on its last line: {key!r}")
    return config, key


def max_new_tokens(home: Path) -> int | str:
    try:
        from affinage.core.settings import load_settings

        return load_settings(home).max_new_tokens
    except Exception:  # noqa: BLE001 - only a label
        return "unknown"


def load_questions() -> list[str]:
    questions = []
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("source"):  # retrieval finds a confident passage: a full RAG prompt
                questions.append(row["question"])
    if not questions:
        raise SystemExit(f"serve_latency: no question with a source in {GOLDEN}")
    return questions


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`affinage serve` as a subprocess; always stopped by `stop()` (terminate, then kill)."""

    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = home / "serve.log"
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float) -> dict:
        command = [*affinage_command(), "--home", str(self.home), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        log("starting: " + shlex.join(command) + f" (log: {self.log_path})")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve_latency: the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        raise SystemExit(f"serve_latency: no answer on {self.url}/healthz after {timeout_s:.0f} s:\n{self.log_tail()}")

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log("the server did not stop within 15 s of SIGTERM: killing it")
                process.kill()
                process.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None


class MemorySampler(threading.Thread):
    """Resident memory of one process (and its children, with psutil) every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_sampled = 0
        self.samples = 0
        self._halt = threading.Event()
        try:
            import psutil

            self._process = psutil.Process(pid)
            self.method = f"psutil {psutil.__version__} (RSS of the server and its children)"
        except Exception:  # noqa: BLE001 - psutil missing or the process gone: fall back to /proc
            self._process = None
            self.method = "/proc/PID/status VmRSS"

    def _proc_status(self, field_name: str) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            pass
        return None

    def rss(self) -> int | None:
        if self._process is not None:
            try:
                total = self._process.memory_info().rss
                for child in self._process.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except Exception:  # noqa: BLE001 - a child that just exited
                        pass
                return total
            except Exception:  # noqa: BLE001 - the process is gone
                return None
        return self._proc_status("VmRSS")

    def high_water_mark(self) -> int | None:
        """The kernel's own peak resident set of the server process (VmHWM), covering the gaps between samples."""
        return self._proc_status("VmHWM")

    def run(self) -> None:
        while not self._halt.is_set():
            value = self.rss()
            if value is not None:
                self.peak_sampled = max(self.peak_sampled, value)
                self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)

    def peak(self) -> int:
        return max(self.peak_sampled, self.high_water_mark() or 0)


# --------------------------------------------------------------------------- the clients


@dataclass
class Result:
    question: str
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    total_s: float | None = None
    content_chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    has_affinage: bool = False
    saw_done: bool | None = None  # None: this SDK version could not be watched for [DONE]
    ended_normally: bool = False
    status: int | None = None  # HTTP status of a refused or failed request
    error: str | None = None
    started: bool = False  # the response headers came back: the stream began

    @property
    def refused(self) -> bool:
        return self.status in (429, 503)

    @property
    def failed(self) -> bool:
        """An error other than a refusal, before the stream started (5xx, other 4xx, connection, timeout)."""
        return self.error is not None and not self.refused and not self.started

    @property
    def truncated(self) -> bool:
        """The stream began but did not end with a finish reason, the affinage field and [DONE]."""
        if not self.started:
            return False
        return not (self.ended_normally and self.finish_reason in FINISHED and self.has_affinage and self.saw_done is not False)

    @property
    def abstained(self) -> bool:
        """A complete answer that never reached the model (the canned 'I don't know'): no prompt tokens."""
        return self.complete and not self.prompt_tokens

    @property
    def complete(self) -> bool:
        return self.started and not self.truncated and self.error is None


def watch_for_done(stream, result: Result) -> None:
    """Note whether the SSE stream carried [DONE]; the SDK swallows it. Private API: skipped if it changed."""
    original = getattr(stream, "_iter_events", None)
    if original is None:
        return
    result.saw_done = False

    def events():
        for event in original():
            if getattr(event, "data", "").startswith("[DONE]"):
                result.saw_done = True
            yield event

    try:
        stream._iter_events = events  # read when iteration starts
    except Exception:  # noqa: BLE001
        result.saw_done = None


def one_request(client, question: str, max_tokens: int | None) -> Result:
    import openai

    result = Result(question)
    begun = time.perf_counter()
    last = None
    kwargs = {"max_tokens": max_tokens} if max_tokens else {}
    try:
        stream = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": question}], stream=True, **kwargs
        )
        result.started = True
        watch_for_done(stream, result)
        for chunk in stream:
            now = time.perf_counter()
            for choice in chunk.choices or ():
                if choice.delta is not None and choice.delta.content:
                    if result.ttft_s is None:
                        result.ttft_s = now - begun
                    else:
                        result.gaps_s.append(now - last)
                    last = now
                    result.content_chunks += 1
                if choice.finish_reason is not None:
                    result.finish_reason = choice.finish_reason
            if chunk.usage is not None:
                result.prompt_tokens = chunk.usage.prompt_tokens
                result.completion_tokens = chunk.usage.completion_tokens
            if (chunk.model_extra or {}).get("affinage") is not None:
                result.has_affinage = True
        result.ended_normally = True
    except openai.APIStatusError as error:
        result.status = error.status_code
        result.error = f"HTTP {error.status_code}: {str(error)[:200]}"
    except Exception as error:  # noqa: BLE001 - every failure is counted, none stops the benchmark
        result.error = f"{type(error).__name__}: {str(error)[:200]}"
    result.total_s = time.perf_counter() - begun
    return result


def make_client(base_url: str, key: str, timeout_s: float):
    import openai

    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0,
                         timeout=openai.Timeout(timeout_s, connect=10.0))


def run_level(base_url: str, key: str, clients: int, requests: int, questions, max_tokens: int | None,
              timeout_s: float, progress) -> tuple[list[Result], float]:
    """`clients` threads start together; each sends its share of `requests` back to back. Results and wall time."""
    shares = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    lock = threading.Lock()
    results: list[Result] = []
    barrier = threading.Barrier(clients + 1)

    def next_question() -> str:
        with lock:
            return next(questions)

    def client_thread(share: int) -> None:
        client = make_client(base_url, key, timeout_s)
        try:
            barrier.wait()
            for _ in range(share):
                result = one_request(client, next_question(), max_tokens)
                with lock:
                    results.append(result)
                    progress.update(1)
                    if result.error or result.truncated:
                        progress.write(f"  request failed: {result.error or 'truncated stream'}")
        finally:
            client.close()

    threads = [threading.Thread(target=client_thread, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    begun = time.perf_counter()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - begun


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(clients: int, results: list[Result], wall_s: float) -> dict:
    measured = [r for r in results if r.complete and not r.abstained]
    ttft = [r.ttft_s for r in measured if r.ttft_s is not None]
    gaps = [gap for r in measured for gap in r.gaps_s]
    tokens = sum(r.completion_tokens or 0 for r in results if r.complete)
    prompts = [r.prompt_tokens for r in measured if r.prompt_tokens]
    statuses: dict[str, int] = {}
    for r in results:
        if r.status is not None:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {
        "clients": clients,
        "requests": len(results),
        "complete": sum(r.complete for r in results),
        "measured": len(measured),
        "abstained": sum(r.abstained for r in results),
        "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
        "itl_p50": percentile(gaps, 50), "itl_p95": percentile(gaps, 95),
        "itl_samples": len(gaps),
        "completion_tokens": tokens,
        "content_chunks": sum(r.content_chunks for r in measured),
        "tokens_per_s": tokens / wall_s if wall_s > 0 else None,
        "wall_s": wall_s,
        "errors": sum(r.failed for r in results),
        "errors_5xx": sum(1 for r in results if r.status is not None and r.status >= 500 and not r.refused),
        "refused": sum(r.refused for r in results),
        "truncated": sum(r.truncated for r in results),
        "statuses": statuses,
        "prompt_tokens": prompts,
        "mean_total_s": sum(r.total_s for r in measured) / len(measured) if measured else None,
        "error_messages": sorted({r.error for r in results if r.error})[:5],
    }


# --------------------------------------------------------------------------- BENCHMARKS.md












def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def gib(value: int | None) -> str:
    return "n/a" if not value else f"{value / GIB:.2f} GiB"


def targets(levels: dict[int, dict], peak_rss: int) -> list[str]:
    """The issue's targets, computed from one mode's levels (the batched one)."""
    lines = []
    for clients, target in TTFT_P95_TARGETS_S.items():
        level = levels.get(clients)
        if level is None or level["ttft_p95"] is None:
            lines.append(f"- NOT MEASURED: p95 time to first token at most {target} s at {clients} client(s)")
            continue
        ok = level["ttft_p95"] <= target and level["complete"] == level["requests"]
        lines.append(f"- {'PASS' if ok else 'FAIL'}: p95 time to first token at most {target} s at {clients} "
                     f"client(s) with a full RAG prompt: {seconds(level['ttft_p95'])} over {level['measured']} "
                     "requests")
    one, many = levels.get(1), levels.get(THROUGHPUT_LEVEL)
    if not one or not many or not one["tokens_per_s"] or many["tokens_per_s"] is None:
        lines.append(f"- NOT MEASURED: aggregate tokens/s at {THROUGHPUT_LEVEL} clients at least "
                     f"{THROUGHPUT_RATIO:g}x that at 1 client")
    else:
        ratio = many["tokens_per_s"] / one["tokens_per_s"]
        lines.append(f"- {'PASS' if ratio >= THROUGHPUT_RATIO else 'FAIL'}: aggregate tokens/s at {THROUGHPUT_LEVEL} "
                     f"clients at least {THROUGHPUT_RATIO:g}x that at 1 client: {many['tokens_per_s']:.1f} against "
                     f"{one['tokens_per_s']:.1f}, {ratio:.2f}x")
    if many is None:
        lines.append(f"- NOT MEASURED: no errors and no truncated streams at {THROUGHPUT_LEVEL} clients")
    else:
        bad = many["errors"] + many["refused"] + many["truncated"]
        ok = bad == 0 and many["complete"] == many["requests"] > 0
        lines.append(f"- {'PASS' if ok else 'FAIL'}: no errors and no truncated streams at {THROUGHPUT_LEVEL} clients: "
                     f"{many['complete']}/{many['requests']} streams complete, {many['errors']} errors, "
                     f"{many['refused']} refused, {many['truncated']} truncated")
    ok = 0 < peak_rss <= PEAK_RSS_TARGET_BYTES
    lines.append(f"- {'PASS' if ok else 'FAIL'}: peak resident memory of the service at most "
                 f"{PEAK_RSS_TARGET_BYTES / GIB:.1f} GiB with the default model: {gib(peak_rss)}")
    return lines


def level_rows(mode: str, levels: dict[int, dict]) -> list[str]:
    one = levels.get(1, {}).get("tokens_per_s")
    rows = []
    for s in levels.values():
        tps = "n/a" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:.1f}"
        ratio = "n/a" if not one or s["tokens_per_s"] is None else f"{s['tokens_per_s'] / one:.2f}x"
        rows.append(f"| {mode} | {s['clients']} | {s['requests']} | {seconds(s['ttft_p50'])} "
                    f"| {seconds(s['ttft_p95'])} | {seconds(s['itl_p50'])} | {seconds(s['itl_p95'])} | {tps} "
                    f"| {ratio} | {s['errors']} | {s['refused']} | {s['truncated']} |")
    return rows


def render(runs: dict[str, dict], info: dict) -> str:
    """``runs``: mode -> {levels, peak_rss, hwm, peak_sampled, rss_warm, rss_end, model}."""
    every = [s for run in runs.values() for s in run["levels"].values()]
    prompts = [p for s in every for p in s["prompt_tokens"]]
    mean_prompt = f"{sum(prompts) / len(prompts):.0f}" if prompts else "n/a"
    prompt_range = f" (min {min(prompts)}, max {max(prompts)})" if prompts else ""
    completions = sum(s["completion_tokens"] for s in every)
    chunks = sum(s["content_chunks"] for s in every)
    abstained = sum(s["abstained"] for s in every)
    statuses: dict[str, int] = {}
    for s in every:
        for status, count in s["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    lines = [
        START,
        "## Streaming latency, throughput and memory of `affinage serve`",
        "",
        "| mode | clients | requests | TTFT p50 | TTFT p95 | ITL p50 | ITL p95 | tokens/s aggregate | vs 1 client "
        "| errors (5xx, other) | refused (429/503) | truncated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[row for mode, run in runs.items() for row in level_rows(mode, run["levels"])],
        "",
        "- Modes: `batched` is `batched_generation = true` (the default: concurrent answers generated together by "
        "transformers' continuous batching, `max_batch_size` at a time); `alone` is `batched_generation = false` "
        "(one answer at a time). Each mode ran on its own fresh server over the same workspace, one after the other.",
    ]
    for mode, run in runs.items():
        lines.append(f"- Peak resident memory of the server process, {mode}: {gib(run['peak_rss'])} (VmHWM "
                     f"{gib(run['hwm'])}, highest sample {gib(run['peak_sampled'])}); after warm-up "
                     f"{gib(run['rss_warm'])}; at the end {gib(run['rss_end'])}. Sampled every 0.5 s with "
                     f"{info['memory_method']}.")
    lines += [
        f"- Model: {info['model']} (`chat_model = smollm2` unless the workspace says otherwise); "
        f"max_tokens per request: {info['max_tokens_label']}; mean prompt tokens (from usage): {mean_prompt}{prompt_range}; "
        f"{completions} completion tokens in {chunks} content chunks"
        + (f"; {abstained} abstained answers left out of the latency figures" if abstained else "") + ".",
        f"- Date: {info['date']}; machine: {info['nproc']} CPU cores ({info['cpu']}), {info['ram']}, "
        f"{info['gpu']}; 1-minute load average {info['load']} when the run started and "
        f"{info['load_end']} when it ended (that one includes the server's own work).",
        f"- Server: `affinage serve` on 127.0.0.1, one worker, rate_limit_per_minute={info['rate_limit']}, "
        f"prompt_tokens_per_minute={info['prompt_tokens']}, max_queue={info['max_queue']}, "
        f"max_in_flight_per_key={info['in_flight']} (one key for every client), "
        f"queue_timeout_seconds={info['queue_timeout']:g}; workspace: demo knowledge base "
        f"(`affinage/demo/kb`) and example bank "
        f"(`affinage/demo/examples.jsonl`); questions: `affinage/demo/golden.jsonl` ({info['questions']} with a "
        f"source), in order, cycling; 1 warm-up request first.",
        f"- Command: `{info['command']}`",
        "- Clients: N threads start together, each with its own `openai` SDK client (stream=True, model "
        "`default`, max_retries=0), sending its share of the level's requests back to back. TTFT: request sent "
        "to first non-empty content delta, time spent queued behind other clients included. ITL: gap between "
        "consecutive content chunks as the client receives them (a chunk can hold more than one token). "
        "tokens/s aggregate: completion tokens of the level over its wall time; vs 1 client: that over the "
        "mode's 1-client figure. Truncated: the stream began but "
        "did not end with a finish_reason (`stop`, `length`, or `content_filter` when the output guard changed the "
        "answer), the `affinage` field and `[DONE]`.",
    ]
    if statuses:
        lines.append("- HTTP statuses of failed requests: "
                     + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())))
    judged = "batched" if "batched" in runs else next(iter(runs))
    lines += ["", f"Targets (computed from the {judged} figures above):", "",
              *targets(runs[judged]["levels"], runs[judged]["peak_rss"]), END]
    return "\n".join(lines)


def print_table(levels: dict[int, dict], peak_rss: int) -> None:
    header = f"{'clients':>7} {'reqs':>5} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} " \
             f"{'tok/s':>6} {'err':>4} {'refused':>7} {'trunc':>5}"
    print(header)
    for s in levels.values():
        def f(v):
            return "n/a" if v is None else f"{v:.3f}"
        print(f"{s['clients']:>7} {s['requests']:>5} {f(s['ttft_p50']):>9} {f(s['ttft_p95']):>9} {f(s['itl_p50']):>8} "
              f"{f(s['itl_p95']):>8} {f(s['tokens_per_s']):>6} {s['errors']:>4} {s['refused']:>7} {s['truncated']:>5}")
    print(f"peak RSS: {gib(peak_rss)}")
    for line in targets(levels, peak_rss):
        print(line[2:])


# --------------------------------------------------------------------------- main


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("levels must be positive integers")
    return levels


def parse_modes(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


def requests_for(levels: list[int], text: str | None) -> dict[int, int]:
    if text is None:
        return {level: DEFAULT_REQUESTS.get(level, 2 * level) for level in levels}
    counts = parse_levels(text)
    if len(counts) == 1:
        counts = counts * len(levels)
    if len(counts) != len(levels):
        raise SystemExit("serve_latency: --requests-per-level needs one number, or one per level")
    for level, count in zip(levels, counts):
        if count < level:
            raise SystemExit(f"serve_latency: {count} requests at {level} clients leaves a client idle; "
                             f"give at least {level}")
    return dict(zip(levels, counts))


def run_mode(home: Path, key: str, mode: str, args, counts: dict[int, int], cycle, raw_path: Path) -> dict:
    """One fresh server in ``mode`` (config.toml already says it): warm-up, every level, its memory."""
    from tqdm import tqdm

    server = Server(home, free_port())
    sampler: MemorySampler | None = None
    levels: dict[int, dict] = {}
    try:
        health = server.start(args.startup_timeout)
        log(f"{mode}: server up at {server.url}: {health}")
        sampler = MemorySampler(server.process.pid)
        sampler.start()

        client = make_client(server.url, key, args.timeout)
        try:
            warm = one_request(client, next(cycle), args.max_tokens)
        finally:
            client.close()
        if not warm.complete:
            raise SystemExit(f"serve_latency: the warm-up request failed: {warm.error or 'truncated stream'}\n"
                             f"{server.log_tail()}")
        log(f"{mode}: warm-up: TTFT {warm.ttft_s:.3f} s, {warm.prompt_tokens} prompt + {warm.completion_tokens} "
            f"completion tokens in {warm.total_s:.2f} s")
        rss_warm = sampler.rss()

        for level in args.levels:
            with tqdm(total=counts[level], desc=f"{mode} {level:>2} client(s)", unit="req",
                      file=sys.stderr) as progress:
                results, wall = run_level(server.url, key, level, counts[level], cycle, args.max_tokens,
                                          args.timeout, progress)
            levels[level] = summarise(level, results, wall)
            with raw_path.open("a", encoding="utf-8") as raw:
                for r in results:
                    raw.write(json.dumps({"mode": mode, "clients": level, **asdict(r)}) + "\n")
            s = levels[level]
            log(f"{mode}, {level} client(s): {s['complete']}/{s['requests']} complete in {wall:.1f} s, "
                f"TTFT p50 {seconds(s['ttft_p50'])} p95 {seconds(s['ttft_p95'])}, "
                f"ITL p50 {seconds(s['itl_p50'])} p95 {seconds(s['itl_p95'])}"
                + (f"; errors: {s['error_messages']}" if s["error_messages"] else ""))
            if server.process.poll() is not None:
                log(f"the server exited with {server.process.returncode}:\n{server.log_tail()}")
                break
        rss_end = sampler.rss()
        hwm = sampler.high_water_mark()
        sampler.stop()
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()
    print(f"-- {mode}")
    print_table(levels, sampler.peak())
    return {"levels": levels, "peak_rss": sampler.peak(), "hwm": hwm, "peak_sampled": sampler.peak_sampled,
            "rss_warm": rss_warm, "rss_end": rss_end, "model": health.get("model", "unknown"),
            "memory_method": sampler.method}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=parse_levels, default=list(DEFAULT_LEVELS),
                        help="comma-separated numbers of concurrent clients (default 1,4,16)")
    parser.add_argument("--requests-per-level", default=None,
                        help="total requests at each level: one number for all, or one per level "
                             f"(default {','.join(str(DEFAULT_REQUESTS[level]) for level in DEFAULT_LEVELS)})")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="max_tokens sent with each request (default: none, the service's max_new_tokens applies)")
    parser.add_argument("--home", default=None, help="affinage workspace (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="client timeout per request, seconds (queueing at 16 clients counts against it)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /healthz")
    parser.add_argument("--modes", type=parse_modes, default=list(MODES),
                        help=f"comma-separated modes to run, in order (default {','.join(MODES)})")
    parser.add_argument("--no-write", action="store_true", help="print the table but leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    counts = requests_for(args.levels, args.requests_per_level)
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")

    load = load_average()
    if load is not None and load > 0.5:
        log(f"warning: load average is {load:.2f}; other work on this machine inflates the latencies")
    questions = load_questions()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="affinage-serve-latency-"))
    max_queue = max(MIN_MAX_QUEUE, max(args.levels))
    config, key = prepare_workspace(home, max_queue)
    raw_path = home / "serve_latency_requests.jsonl"  # one line per request, this run only
    raw_path.write_text("", encoding="utf-8")
    runs = {}
    for mode in args.modes:
        config = write_config(home, max_queue, batched=MODES[mode])
        runs[mode] = run_mode(home, key, mode, args, counts, itertools.cycle(questions), raw_path)
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001 - best effort
        gpu = "GPU unknown"
    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "nproc": nproc(), "ram": memory_gib(), "gpu": gpu,
        "load": "unknown" if load is None else f"{load:.2f}",
        "load_end": "unknown" if load_average() is None else f"{load_average():.2f}",
        "model": next(iter(runs.values()))["model"],
        "max_tokens_label": (f"{args.max_tokens} (sent by the client)" if args.max_tokens
                             else f"not sent (the service's max_new_tokens, {max_new_tokens(home)})"),
        "memory_method": next(iter(runs.values()))["memory_method"],
        "rate_limit": config["rate_limit_per_minute"], "max_queue": config["max_queue"],
        "prompt_tokens": config["prompt_tokens_per_minute"], "in_flight": config["max_in_flight_per_key"],
        "queue_timeout": config["queue_timeout_seconds"],
        "questions": len(questions),
        "command": command_line(__file__, argv),
    }
    if args.no_write:
        log("--no-write: BENCHMARKS.md left as it was")
    else:
        update_section(render(runs, info), "serve_latency")
        log(f"wrote {BENCHMARKS.relative_to(ROOT)}")
    log(f"per-request results in {raw_path}; server logs in {home / 'serve.log'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the server was stopped by main's finally
        log("interrupted: BENCHMARKS.md left as it was")
        sys.exit(130)
