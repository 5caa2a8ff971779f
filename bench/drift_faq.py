#!/usr/bin/env python
"""The drift detector on real questions: affinage's MMD test against Evidently's embedding drift default.

    .venv/bin/python bench/drift_faq.py [--trials 200] [--side-trials 50] [--evidently-python PATH]
        [--install-evidently] [--faq-dir DIR] [--plot PNG] [--no-write]

1. Questions: the section headings of the Python FAQ from Debian's ``python3-doc`` (each one a question) plus the
   50 paraphrased questions of ``python_faq_questions.jsonl``; off-topic: the demo support knowledge base's
   questions (billing, accounts, integrations). Each unique question is embedded once with the default embedder.
2. Trials, seeded: a reference window and a recent window of row indices; "same" draws both from the FAQ pool,
   "shifted" makes 20% of the recent window off-topic. Three designs (README): ``pool`` (500 + 500 drawn with
   replacement from the whole pool: the requirement's windows), ``distinct`` (a random split into halves, no
   question repeated or shared) and ``halves-resampled`` (500 + 500 drawn with replacement from disjoint halves).
3. affinage: ``tuning.drift.mmd_test`` with the project's permutations and alpha. Evidently: its real
   ``EmbeddingsDriftMetric`` default method (a classifier's ROC AUC), run in a separate interpreter when it cannot
   be imported next to the project's pandas; without Evidently, ``tuning.drift.domain_classifier_auc`` stands in
   and the output says so.
4. Writes the ``bench:drift_faq`` section of ../BENCHMARKS.md with computed PASS/FAIL lines against the targets
   (detection >= 0.9 at a 20% shift, false alarms <= 0.05, windows of 500). About 6 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                      ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (  # noqa: E402
    command_line, cpu_model, load_average, markers, memory_gib, nproc, update_section, wilson,
)

ROOT = Path(__file__).resolve().parents[1]
PARAPHRASES = ROOT / "bench" / "python_faq_questions.jsonl"
OFF_TOPIC = (ROOT / "affinage" / "demo" / "golden.jsonl", ROOT / "affinage" / "demo" / "examples.jsonl")
# Evidently 0.7 imports a helper pandas 3 removed, so it runs in its own interpreter (build/ is git-ignored).
EVIDENTLY_VENV = ROOT / "build" / "evidently-venv"
EVIDENTLY_REQUIREMENTS = ("evidently==0.7.23", "pandas<3")
THRESHOLD = 0.55  # Evidently's model() threshold on ROC AUC (applies when its bootstrap is off)
TARGET_DETECTION, TARGET_FALSE_ALARM = 0.9, 0.05
WINDOW, SHIFT = 500, 0.2
# "pool" carries the verdict (the requirement's windows of 500 from one distribution); README.md describes all three
DESIGNS = ("pool", "distinct", "halves-resampled")
FALLBACK_CLASSIFIER_TRIALS = 50  # the project's 5-fold classifier is several times slower than Evidently's split
START, END = markers("drift_faq")


def log(message: str) -> None:
    print(f"[drift_faq] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- questions


def faq_questions(faq_dir: Path) -> list[str]:
    """The FAQ's h2/h3 headings that are questions, without the permalink pilcrow, in page order."""
    from bs4 import BeautifulSoup

    found = []
    for page in sorted(faq_dir.glob("*.html")):
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        for heading in soup.find_all(["h2", "h3"]):
            text = " ".join(heading.get_text(" ").replace("\u00b6", "").split())
            if text.endswith("?"):
                found.append(text)
    return found


def jsonl_questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------- trials


def plan(design: str, same: bool, trials: int, n_pool: int, n_off: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference and recent windows as row indices into [pool; off-topic], one row of each array per trial."""
    rng = np.random.default_rng([seed, DESIGNS.index(design), int(same)])
    refs, recents = [], []
    for _ in range(trials):
        if design == "pool":
            halves = (np.arange(n_pool), np.arange(n_pool))
        else:
            order = rng.permutation(n_pool)
            halves = (order[:n_pool // 2], order[n_pool // 2:2 * (n_pool // 2)])
        if design == "distinct":
            size = len(halves[0])
            ref, faq = halves[0], halves[1]
            off_count = 0 if same else round(SHIFT * size)
            faq = rng.choice(faq, size - off_count, replace=False)
            off = n_pool + rng.choice(n_off, off_count, replace=False)
        else:
            off_count = 0 if same else round(SHIFT * WINDOW)
            ref = rng.choice(halves[0], WINDOW)
            faq = rng.choice(halves[1], WINDOW - off_count)
            off = n_pool + rng.choice(n_off, off_count)
        refs.append(ref)
        recents.append(np.concatenate([faq, off]))
    return np.asarray(refs), np.asarray(recents)


def run_mmd(vectors: np.ndarray, refs: np.ndarray, recents: np.ndarray, permutations: int, alpha: float,
            desc: str) -> dict:
    from tqdm import tqdm

    from tuning.drift import mmd_test

    out = {"p_value": [], "drifted": [], "seconds": []}
    for i in tqdm(range(len(refs)), desc=desc, unit="trial", file=sys.stderr, mininterval=0.5):
        began = time.perf_counter()
        result = mmd_test(vectors[refs[i]], vectors[recents[i]], permutations=permutations, seed=i, alpha=alpha)
        out["seconds"].append(time.perf_counter() - began)
        out["p_value"].append(result.p_value)
        out["drifted"].append(bool(result.drifted))
    return out


# --------------------------------------------------------------------------- Evidently (runs in its own interpreter)


def evidently_worker(in_path: Path, out_path: Path, report_check: bool) -> None:
    """Evidently's EmbeddingsDriftMetric default for every planned trial; imports nothing from the project.

    The metric's own line is ``model(bootstrap=reference rows < 1000)``: called here directly, because the
    metric also fits a t-SNE for its plot (~18 s a call). ``report_check`` runs one full Report to confirm.
    """
    import evidently
    import pandas as pd
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with nltk, an Evidently dependency
        def tqdm(items, **_kw):
            return items

    data = np.load(in_path)
    vectors = data["vectors"]
    columns = [f"e{i}" for i in range(vectors.shape[1])]
    frame = lambda rows: pd.DataFrame(vectors[rows], columns=columns)  # noqa: E731
    import sklearn

    result = {"version": evidently.__version__, "pandas": pd.__version__, "scikit-learn": sklearn.__version__,
              "numpy": np.__version__, "python": sys.version.split()[0], "trials": {}}
    keys = sorted({k.rsplit(".", 1)[0] for k in data.files if k != "vectors"})
    for key in keys:
        refs, recents = data[f"{key}.ref"], data[f"{key}.rec"]
        method = model(bootstrap=refs.shape[1] < 1000)  # the default EmbeddingsDriftMetric picks
        scores, detected, seconds = [], [], []
        for i in tqdm(range(len(refs)), desc=f"Evidently {key}", unit="trial", file=sys.stderr, mininterval=0.5):
            began = time.perf_counter()
            score, drifted, _name = method(frame(recents[i]), frame(refs[i]))  # (current, reference)
            seconds.append(time.perf_counter() - began)
            scores.append(float(score))
            detected.append(bool(drifted))
        result["trials"][key] = {"auc": scores, "default_drifted": detected, "seconds": seconds,
                                 "bootstrap": bool(refs.shape[1] < 1000),
                                 "bootstrap_threshold": bootstrap_threshold(refs.shape[1], recents.shape[1])}
    if report_check:
        from evidently.legacy.metrics import EmbeddingsDriftMetric
        from evidently.legacy.pipeline.column_mapping import ColumnMapping
        from evidently.legacy.report import Report

        key = "pool.shifted"
        report = Report(metrics=[EmbeddingsDriftMetric("question")])
        report.run(reference_data=frame(data[f"{key}.ref"][0]), current_data=frame(data[f"{key}.rec"][0]),
                   column_mapping=ColumnMapping(embeddings={"question": columns}))
        metric = report.as_dict()["metrics"][0]["result"]
        result["report_check"] = {"trial": f"{key} #0", "report_auc": float(metric["drift_score"]),
                                  "report_drifted": bool(metric["drift_detected"]),
                                  "direct_auc": result["trials"][key]["auc"][0],
                                  "direct_drifted": result["trials"][key]["default_drifted"][0]}
    out_path.write_text(json.dumps(result))


def bootstrap_threshold(m: int, n: int) -> float:
    """The AUC Evidently's bootstrap must beat at these window sizes: its split and random scores, repeated."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import calc_roc_auc_random
    from sklearn.model_selection import train_test_split

    labels = np.r_[np.ones(m, dtype=int), np.zeros(n, dtype=int)]  # reference = 1, as ModelDriftMethod labels
    _, _, _, y_test = train_test_split(np.zeros((m + n, 1)), labels, test_size=0.5, random_state=42, shuffle=True)
    return float(np.percentile([calc_roc_auc_random(y_test, i) for i in range(100)], 95))


def evidently_importable(python: str) -> tuple[bool, str]:
    """Whether ``python`` imports Evidently's embedding drift methods, and the last error line when it does not."""
    probe = "import evidently.legacy.metrics.data_drift.embedding_drift_methods"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = done.stderr.strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


def pandas_lacks_evidently_import() -> str:
    """Why Evidently 0.7 cannot live beside this pandas, or '' when it can."""
    import pandas
    import pandas.core.dtypes.common as common

    if hasattr(common, "infer_dtype_from_object"):
        return ""
    from importlib.metadata import distributions

    from packaging.requirements import Requirement

    def needs_pandas(line: str) -> bool:
        req = Requirement(line)
        return req.name.lower() == "pandas" and (req.marker is None or req.marker.evaluate({"extra": ""}))

    users = sorted({d.metadata["Name"] for d in distributions() if any(needs_pandas(r) for r in d.requires or [])})
    return (f"pandas {pandas.__version__} (required by {', '.join(users) or 'the project'}) lacks "
            f"`pandas.core.dtypes.common.infer_dtype_from_object`, which Evidently imports at start-up")


def install_evidently() -> None:
    if not (EVIDENTLY_VENV / "bin" / "python").exists():
        command = [sys.executable, "-m", "venv", str(EVIDENTLY_VENV)]
        log("running: " + shlex.join(command))
        subprocess.run(command, check=True)
    command = [str(EVIDENTLY_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *EVIDENTLY_REQUIREMENTS]
    log("running: " + shlex.join(command))
    subprocess.run(command, check=True)


def shown(path: str) -> str:
    """A path relative to the repository when it lies inside, so the section reads the same on every checkout."""
    return os.path.relpath(path, ROOT) if Path(os.path.abspath(path)).is_relative_to(ROOT) else path


def choose_evidently(explicit: str | None) -> tuple[str | None, str]:
    """The interpreter that runs Evidently (None: not available), and why this one."""
    here, error = evidently_importable(sys.executable)
    if here:
        return sys.executable, "imported in the project's environment"
    why_not_here = f"Evidently is not importable in the project's environment ({error or 'not installed'})"
    pandas_gap = pandas_lacks_evidently_import()
    if pandas_gap:
        why_not_here += f"; nor can it be installed there without downgrading pandas: {pandas_gap}"
    candidates = [explicit] if explicit else [str(EVIDENTLY_VENV / "bin" / "python")]
    for python in candidates:
        if python and Path(python).exists():
            ok, other_error = evidently_importable(python)
            if ok:
                return python, f"{why_not_here}, so it ran in a separate interpreter (`{shown(python)}`)"
            why_not_here += f"; `{shown(python)}` cannot import it either ({other_error})"
    return None, why_not_here


def run_evidently(python: str, vectors: np.ndarray, plans: dict, report_check: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="affinage-drift-bench-") as folder:
        in_path, out_path = Path(folder) / "trials.npz", Path(folder) / "evidently.json"
        arrays = {"vectors": vectors}
        for key, (refs, recents) in plans.items():
            arrays[f"{key}.ref"], arrays[f"{key}.rec"] = refs, recents
        np.savez(in_path, **arrays)
        command = [python, str(Path(__file__).resolve()), "--evidently-worker", str(in_path), str(out_path)]
        if report_check:
            command.append("--report-check")
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"drift_faq: the Evidently worker failed with exit status {done.returncode} (see above)")
        return json.loads(out_path.read_text())


def run_fallback_classifier(vectors: np.ndarray, plans: dict) -> dict:
    """The project's domain_classifier_auc (5-fold logistic regression) on the first trials of each kind."""
    from tqdm import tqdm

    from tuning.drift import domain_classifier_auc

    trials = {}
    for key, (refs, recents) in plans.items():
        count = min(len(refs), FALLBACK_CLASSIFIER_TRIALS)
        scores, seconds = [], []
        for i in tqdm(range(count), desc=f"classifier {key}", unit="trial", file=sys.stderr, mininterval=0.5):
            began = time.perf_counter()
            scores.append(domain_classifier_auc(vectors[refs[i]], vectors[recents[i]], seed=i))
            seconds.append(time.perf_counter() - began)
        trials[key] = {"auc": scores, "default_drifted": None, "seconds": seconds}
    return {"trials": trials}


# --------------------------------------------------------------------------- figures


def rate(flags: list[bool]) -> str:
    k, n = int(sum(flags)), len(flags)
    low, high = wilson(k, n)
    return f"{k / n:.3f} ({k}/{n}; 95% CI {low:.3f}-{high:.3f})"


def spread(values: list[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    p5, p50, p95 = np.percentile(v, [5, 50, 95])
    return f"{v.mean():.{digits}f} / {p5:.{digits}f} / {p50:.{digits}f} / {p95:.{digits}f}"


def verdict(flags: list[bool], target: float, at_least: bool) -> str:
    k, n = int(sum(flags)), len(flags)
    value = k / n
    if (value >= target) if at_least else (value <= target):
        return "PASS"
    low, high = wilson(k, n)
    noise = (high >= target) if at_least else (low <= target)
    return "FAIL (within sampling noise: the 95% CI includes the target)" if noise else "FAIL"


def detector_rows(mmd: dict, classifier: dict, key: str, real: bool) -> list[tuple[str, list[bool], list[bool]]]:
    """(name, detections on shifted trials, alarms on same-distribution trials) for each detector."""
    same, shifted = f"{key}.same", f"{key}.shifted"
    rows = [("affinage MMD test", mmd[shifted]["drifted"], mmd[same]["drifted"])]
    over = lambda k: [a > THRESHOLD for a in classifier["trials"][k]["auc"]]  # noqa: E731
    if real:
        rows.append((f"Evidently `model()`, ROC AUC > {THRESHOLD}", over(shifted), over(same)))
        rows.append(("Evidently `EmbeddingsDriftMetric` default" + ("*" if classifier["trials"][same]["bootstrap"]
                                                                    else ""),
                     classifier["trials"][shifted]["default_drifted"], classifier["trials"][same]["default_drifted"]))
    else:
        rows.append((f"re-implementation: `domain_classifier_auc` > {THRESHOLD}", over(shifted), over(same)))
    return rows


def section(info: dict, mmd: dict, classifier: dict, args) -> str:
    real = info["evidently_python"] is not None
    head = detector_rows(mmd, classifier, "pool", real)
    verdict_lines = "\n".join(
        f"| {name} | {rate(det)} | {rate(fa)} | {verdict(det, TARGET_DETECTION, True)} | "
        f"{verdict(fa, TARGET_FALSE_ALARM, False)} |" for name, det, fa in head)
    mmd_line = head[0]
    summary = (f"detection {verdict(mmd_line[1], TARGET_DETECTION, True)}, "
               f"false alarms {verdict(mmd_line[2], TARGET_FALSE_ALARM, False)}")
    side_rows = []
    for key in ("distinct", "halves-resampled"):
        if f"{key}.same" not in mmd:
            continue
        size = info["sizes"][key]
        for name, det, fa in detector_rows(mmd, classifier, key, real):
            side_rows.append(f"| {key} ({size} + {size}) | {name} | {rate(det)} | {rate(fa)} |")
    dist_rows = []
    for key in mmd:
        design, kind = key.rsplit(".", 1)
        auc = classifier["trials"][key]["auc"]
        dist_rows.append(f"| {design} | {kind} | {spread(mmd[key]['p_value'])} | {spread(auc)} |")
    timing = []
    for key in mmd:
        c = classifier["trials"][key]["seconds"]
        timing.append(f"{key} {np.mean(mmd[key]['seconds']):.3f} s / {np.mean(c):.3f} s")
    classifier_name = f"Evidently {classifier['version']}" if real else "re-implementation, `domain_classifier_auc`"
    if real:
        provenance = (f"Evidently {classifier['version']}'s own code (`evidently.legacy.metrics.data_drift."
                      f"embedding_drift_methods.model`, the method `EmbeddingsDriftMetric` uses by default: a "
                      f"50/50 train/test split, `SGDClassifier(loss=\"log_loss\")`, ROC AUC on the test half). "
                      f"{info['evidently_why']}: Python {classifier['python']}, pandas {classifier['pandas']}, "
                      f"scikit-learn {classifier['scikit-learn']}, numpy {classifier['numpy']}.")
        check = classifier.get("report_check")
        if check:
            provenance += (f" Cross-check, one full `Report([EmbeddingsDriftMetric])` on trial {check['trial']}: "
                           f"ROC AUC {check['report_auc']:.4f}, drift {check['report_drifted']}; the direct call: "
                           f"{check['direct_auc']:.4f}, drift {check['direct_drifted']}.")
    else:
        provenance = (f"**Not Evidently itself**: {info['evidently_why']}. Its stand-in is the project's "
                      f"`tuning.drift.domain_classifier_auc` (standardised logistic regression, 5-fold mean ROC AUC; "
                      f"Evidently uses one 50/50 split and an SGD classifier), thresholded at {THRESHOLD}, on the "
                      f"first {FALLBACK_CLASSIFIER_TRIALS} trials of each kind only. Set up the real one with "
                      f"`--install-evidently`.")
    load = " / ".join("n/a" if x is None else f"{x:.2f}" for x in (info["load_start"], info["load_end"]))
    half = info["pool"] // 2
    star = ("\n\n\\* Evidently's metric turns on its bootstrap when the reference has fewer than 1,000 rows, as "
            "here: drift when the ROC AUC exceeds the 95th percentile of 100 AUCs of random scores on the same test "
            f"half ({classifier['trials']['pool.same']['bootstrap_threshold']:.3f} at {WINDOW} + {WINDOW} rows) "
            f"instead of {THRESHOLD}.") if real else ""
    command = command_line(__file__, [a for a in sys.argv[1:] if a != "--no-write"])
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    return "\n".join([
        START,
        "## Drift detection on the Python FAQ: affinage's MMD test vs Evidently's embedding drift default",
        "",
        f"**Targets (windows of {WINDOW} questions, {SHIFT:.0%} off-topic shift): detection >= {TARGET_DETECTION}, "
        f"false alarms <= {TARGET_FALSE_ALARM}. affinage's MMD test: {summary}.** Both windows of a "
        f"same-distribution trial are drawn with replacement from the same pool of {info['pool']} Python FAQ "
        f"questions; a shifted recent window swaps {SHIFT:.0%} of its rows for off-topic support questions. "
        f"{info['trials_pool']} trials of each kind, seed {args.seed}.",
        "",
        f"| detector | detection rate, {SHIFT:.0%} shift | false alarm rate | detection >= {TARGET_DETECTION} "
        f"| false alarms <= {TARGET_FALSE_ALARM} |",
        "|---|---|---|---|---|",
        verdict_lines + star,
        "",
        f"The two windows of a same-distribution trial are exchangeable, and then a permutation test's false alarm "
        f"rate is its level: with alpha {info['alpha']} and {info['permutations']} permutations P(p < alpha) = "
        f"{info['exact_level']:.4f}. The target sits at that nominal rate, so the measured rate varies around it by "
        f"sampling noise (see its interval) rather than showing a margin.",
        "",
        "### Other window designs (no verdict)",
        "",
        f"| design (rows per window) | detector | detection rate, {SHIFT:.0%} shift | false alarm rate |",
        "|---|---|---|---|",
        *(side_rows or ["| (not run) | | | |"]),
        "",
        f"- `distinct`: each trial splits the pool into two random halves of {half}; the reference is one half, the "
        f"recent window the other ({SHIFT:.0%} of it swapped for off-topic questions when shifted). No question is "
        f"repeated or shared, which caps the windows at {half} rows.",
        f"- `halves-resampled`: the same split, then {WINDOW} rows drawn with replacement from each half. Each "
        f"question recurs about {WINDOW / half:.1f} times in its own window and never in the other, so the two "
        f"windows are two different distributions ({half} distinct questions each): a \"same-distribution\" trial "
        f"here is not one, and its alarm rate describes the design, not a false alarm rate.",
        "",
        "### Scores: mean / 5th / 50th / 95th percentile",
        "",
        f"| design | windows | MMD p-value | ROC AUC ({classifier_name}) |",
        "|---|---|---|---|",
        *dist_rows,
        "",
        "### How",
        "",
        f"- Date: {info['date']}; whole run {info['wall_s'] / 60:.1f} min.",
        f"- Machine: {cpu_model()}, {nproc()} CPUs, {memory_gib()}, no GPU; 1-minute load average at start / end: "
        f"{load}.",
        f"- Command: `{command}`",
        f"- Versions: {versions}.",
        f"- Questions: {info['faq_headings']} h2/h3 headings ending in \"?\" ({info['faq_unique']} unique) in the "
        f"{info['faq_pages']} HTML files of `{info['faq_dir']}` (python3-doc {info['python3_doc']}) plus the "
        f"{info['paraphrases']} paraphrased questions of `bench/python_faq_questions.jsonl`: "
        f"{info['pool']} unique questions. Off-topic: {info['off_topic']} unique questions of the demo support "
        f"knowledge base (`affinage/demo/golden.jsonl`, `examples.jsonl`: billing, accounts, integrations).",
        f"- Embeddings: all-MiniLM-L6-v2 through the project's `retrieval.embeddings.SentenceEmbeddings` "
        f"(normalised), each question once ({info['embed_s']:.1f} s including loading); windows index into them.",
        f"- affinage: `tuning.drift.mmd_test` (unbiased squared MMD, RBF kernel with the median-distance bandwidth, "
        f"permutation p-value) with `drift_permutations` = {info['permutations']} (the Settings default) and alpha "
        f"{info['alpha']} (its default, which the gates use); permutation seed = trial number.",
        f"- Classifier: {provenance}",
        f"- Time per trial (one window pair), MMD / classifier: {'; '.join(timing)}.",
        END,
    ])


def plot(path: Path, mmd: dict, classifier: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind in ("same", "shifted"):
        key = f"pool.{kind}"
        axes[0].hist(mmd[key]["p_value"], bins=np.linspace(0, 1, 41), alpha=0.6, label=kind)
        axes[1].hist(classifier["trials"][key]["auc"], bins=np.linspace(0.4, 1.0, 61), alpha=0.6, label=kind)
    axes[0].set(title="MMD p-value, windows of 500", xlabel="p-value", ylabel="trials")
    axes[1].axvline(THRESHOLD, color="k", linestyle="--", linewidth=1)
    axes[1].set(title="classifier ROC AUC, windows of 500", xlabel="ROC AUC")
    for axis in axes:
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log(f"plot written to {path}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200,
                        help="same-distribution and shifted trials each, windows of 500 (default 200)")
    parser.add_argument("--side-trials", type=int, default=50,
                        help="trials of each kind for the other two designs; 0 skips them (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every window and split (default 0)")
    parser.add_argument("--faq-dir", help="the FAQ's HTML folder (default: python3-doc's, installed when missing)")
    parser.add_argument("--evidently-python", help="an interpreter that can import Evidently "
                        f"(default: this one, else {EVIDENTLY_VENV.relative_to(ROOT)}/bin/python)")
    parser.add_argument("--install-evidently", action="store_true",
                        help=f"create {EVIDENTLY_VENV.relative_to(ROOT)} with {' '.join(EVIDENTLY_REQUIREMENTS)} first")
    parser.add_argument("--plot", help="also save p-value and ROC AUC histograms to this PNG")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--evidently-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--report-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.evidently_worker:
        evidently_worker(Path(args.evidently_worker[0]), Path(args.evidently_worker[1]), args.report_check)
        return 0
    if args.trials < 1 or args.side_trials < 0:
        parser.error("--trials must be at least 1 and --side-trials at least 0")

    import inspect

    import sentence_transformers
    import sklearn
    import torch

    from affinage.core.settings import Settings
    from rag_faq import ensure_faq_dir, python3_doc_version
    from retrieval.embeddings import SentenceEmbeddings
    from tuning.drift import mmd_test

    if args.install_evidently:
        install_evidently()
    load_start, started = load_average(), time.perf_counter()
    if load_start is not None and load_start > 1.0:
        log(f"warning: load average is {load_start:.2f}; the per-trial times will be inflated")
    evidently_python, evidently_why = choose_evidently(args.evidently_python)
    log(("Evidently: " + evidently_why) if evidently_python else
        f"{evidently_why}: the classifier column is the re-implementation (pass --install-evidently for the real one)")

    faq_dir = ensure_faq_dir(args.faq_dir)
    headings = faq_questions(faq_dir)
    paraphrases = jsonl_questions(PARAPHRASES)
    pool = unique(headings + paraphrases)
    off_topic = [q for q in unique([q for path in OFF_TOPIC for q in jsonl_questions(path)]) if q not in pool]
    log(f"{len(headings)} FAQ headings + {len(paraphrases)} paraphrases = {len(pool)} unique questions; "
        f"{len(off_topic)} off-topic")

    defaults = Settings.model_fields
    permutations = defaults["drift_permutations"].default
    alpha = inspect.signature(mmd_test).parameters["alpha"].default
    began = time.perf_counter()
    vectors = SentenceEmbeddings(defaults["embedder"].default).encode(pool + off_topic).astype(np.float64)
    embed_s = time.perf_counter() - began

    counts = {"pool": args.trials, "distinct": args.side_trials, "halves-resampled": args.side_trials}
    plans = {f"{design}.{kind}": plan(design, kind == "same", counts[design], len(pool), len(off_topic), args.seed)
             for design in DESIGNS if counts[design] for kind in ("same", "shifted")}
    mmd = {key: run_mmd(vectors, refs, recents, permutations, alpha, f"MMD {key}")
           for key, (refs, recents) in plans.items()}
    if evidently_python:
        classifier = run_evidently(evidently_python, vectors, plans, report_check=True)
    else:
        classifier = run_fallback_classifier(vectors, plans)

    # P(p < alpha) under exchangeability: p = (1 + k) / (1 + B) with k uniform on 0..B
    exact_level = sum(1 for k in range(permutations + 1) if (1 + k) / (1 + permutations) < alpha) / (permutations + 1)
    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "pool": len(pool), "off_topic": len(off_topic), "paraphrases": len(paraphrases),
        "faq_headings": len(headings), "faq_unique": len(unique(headings)),
        "faq_pages": len(list(faq_dir.glob("*.html"))), "faq_dir": faq_dir, "python3_doc": python3_doc_version(),
        "sizes": {"pool": WINDOW, "distinct": len(pool) // 2, "halves-resampled": WINDOW},
        "trials_pool": args.trials, "permutations": permutations, "alpha": alpha, "exact_level": exact_level,
        "embed_s": embed_s, "evidently_python": evidently_python, "evidently_why": evidently_why,
        "load_start": load_start, "load_end": load_average(), "wall_s": time.perf_counter() - started,
        "versions": {"numpy": np.__version__, "scikit-learn": sklearn.__version__, "torch": torch.__version__,
                     "sentence-transformers": sentence_transformers.__version__},
    }
    text = section(info, mmd, classifier, args)
    print(text)
    if args.plot:
        plot(Path(args.plot), mmd, classifier)
    if not args.no_write:
        update_section(text, "drift_faq")
    return 0


if __name__ == "__main__":
    sys.exit(main())
