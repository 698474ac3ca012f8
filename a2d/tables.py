"""Result tables in the paper's layout: one row per system (mean and standard deviation over seeds),
BLEU, chrF, chrF++ and TER per test set, marks for students significantly better than the no-KD and
Word-KD baselines; as markdown, CSV (one row per run, with each score's 95% bootstrap interval and
the p-values) and LaTeX, the sacrebleu signatures under each. Beside them: a training table (per run,
validation BLEU after each epoch, speed, wall time, peak memory) and the provenance (resolved config,
package versions, git commit)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from a2d.config import Cleaning, EvaluationConfig
from a2d.evaluate import LOWER_IS_BETTER, METRICS
from a2d.files import atomic_path, read_json, write_json
from a2d.plan import BASELINE_METHODS, base_name
from a2d.summary import TrainingSummary

MARKS = dict(zip(BASELINE_METHODS, "†‡"))  # by the baseline's method
SCORE_COLUMNS = ("", "_signature", "_bootstrap_mean", "_ci95")  # per metric, after its name
PACKAGES = ("torch", "deepspeed", "sacrebleu", "sentencepiece", "sacremoses", "snakemake", "numpy", "pandas", "ctranslate2")


def megabytes(path: str | Path) -> float:
    """Size of a file, or of the files of a directory."""
    path = Path(path)
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 1e6


def runs_frame(metric_paths: list[str], summary_paths: list[str], significance_paths: list[str] = (),
               figure_paths: list[str] = (), speed_paths: list[str] = (), model_paths: list[str] = (),
               export_paths: list[str] = ()) -> pd.DataFrame:
    """One row per trained run and test set: scores, method, size, decoding speed, p-values against each baseline."""
    summaries = {s.system: s for s in map(TrainingSummary.read, summary_paths)}
    speeds = {}  # (run, test set) -> speed; files named <run>.<test set>.speed.json
    for path in speed_paths:
        run, test_set = Path(path).name.removesuffix(".speed.json").split(".", 1)
        speeds[run, test_set] = read_json(path)
    model_mb = {Path(p).parent.name: megabytes(p) for p in model_paths}  # <run>/model.safetensors
    export_mb = {Path(p).name.removesuffix(".ct2"): megabytes(p) for p in export_paths}  # <run>.ct2
    figures: dict[str, list[str]] = {}
    for path in figure_paths:  # named <system>.<kind>.png
        figures.setdefault(Path(path).name.split(".")[0], []).append(str(path))
    tests: dict[tuple[str, str], dict] = {}  # (run, test set) -> p-value and partner run per metric and baseline
    for path in significance_paths:
        result = read_json(path)
        for row in result["comparisons"]:
            columns = tests.setdefault((row["system"], result["test_set"]), {})
            for metric in METRICS:
                if f"{metric}_p" in row:  # absent from tests run before a2d scored it
                    columns[f"{metric}_p_vs_{row['baseline']}"] = row[f"{metric}_p"]
                    columns[f"{metric}_vs_{row['baseline']}"] = row["baseline_run"]
    rows = []
    for metrics in map(read_json, metric_paths):
        run = metrics["system"]
        summary = summaries.get(run)
        speed = speeds.get((run, metrics["test_set"]), {})
        if summary is None:
            raise ValueError(f"no training summary for system {run!r}")
        rows.append({"system": base_name(run), "run": run, "method": summary.method,
                     "parameters": summary.parameters, "test_set": metrics["test_set"],
                     **{m + column: metrics.get(m + column) for m in METRICS for column in SCORE_COLUMNS},
                     "figures": ";".join(sorted(figures.get(run, []))),
                     "model_mb": model_mb.get(run), "export_mb": export_mb.get(run),
                     "sentences": speed.get("sentences"), "decoding_seconds": speed.get("seconds"),
                     "threads": speed.get("threads"), "device": speed.get("device"),
                     **tests.get((run, metrics["test_set"]), {})})
    frame = pd.DataFrame(rows)
    # Metrics files written before a2d scored a metric lack it: a metric some run lacks is left out
    # (re-run `evaluate` to have it), rather than shown half empty.
    unscored = [m + column for m in METRICS if frame[m].isna().any() for column in SCORE_COLUMNS]
    return frame.drop(columns=unscored)


def training_frame(summary_paths: list[str], benchmark_paths: list[str] = ()) -> pd.DataFrame:
    """One row per trained run: its validation BLEU after each epoch and what its training cost.
    Wall time and peak RSS are Snakemake's benchmark of the `train` job (<run>.tsv, megabytes): of
    its last invocation, so a run resumed from a checkpoint counts the time since the resume."""
    costs = {Path(p).stem: pd.read_csv(p, sep="\t").iloc[-1] for p in benchmark_paths}
    rows = []
    for summary in map(TrainingSummary.read, summary_paths):
        speeds = [record.target_tokens_per_s for record in summary.history]
        cost = costs.get(summary.system, {})
        rows.append({"system": base_name(summary.system), "run": summary.system, "method": summary.method,
                     "epochs": len(summary.history), "best_epoch": summary.best_epoch,
                     "best_valid_bleu": summary.best_valid_bleu,
                     "valid_bleu_per_epoch": ", ".join(f"{r.valid_bleu:.2f}" for r in summary.history),
                     "last_train_nll": summary.history[-1].train_nll if summary.history else None,
                     "target_tokens_per_s_min": min(speeds, default=None),
                     "target_tokens_per_s_max": max(speeds, default=None),
                     "wall_seconds": cost.get("s"), "peak_rss_gb": cost["max_rss"] / 1024 if "max_rss" in cost else None})
    return pd.DataFrame(rows)


def write_training_table(runs: pd.DataFrame, out: Path) -> None:
    """training.csv (as the frame holds it) and training.md (wall time as minutes and seconds)."""
    with atomic_path(out / "training.csv") as tmp:
        runs.to_csv(tmp, index=False)
    speeds = runs[["target_tokens_per_s_min", "target_tokens_per_s_max"]]
    shown = runs.assign(target_tokens_per_s=["" if pd.isna(low) else f"{low:,.0f} to {high:,.0f}"
                                             for low, high in speeds.itertuples(index=False)],
                        wall_time=runs["wall_seconds"].map(lambda s: "" if pd.isna(s) else f"{int(s // 60)} min {int(s % 60)} s"))
    shown = shown.drop(columns=["system", "wall_seconds", *speeds]).rename(columns=lambda c: c.replace("_", " "))
    notes = ["valid BLEU per epoch: greedy, on the validation set, after each epoch (models/<run>/train.json)",
             "wall time and peak RSS: Snakemake's benchmark of the train job (benchmarks/train/<run>.tsv); "
             "a run resumed from a checkpoint counts the time since its resume"]
    text = shown.to_markdown(index=False, floatfmt=".2f") + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with atomic_path(out / "training.md") as tmp:
        tmp.write_text(text, encoding="utf-8")


def scored_metrics(runs: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if m in runs]


def better(runs: pd.DataFrame, metric: str, baseline: str, level: float, scores: dict) -> bool:
    """Significantly better than the baseline in every seed pair: p below the level and a better score,
    higher or (TER) lower (sacrebleu gives even an identical system the smallest p-value, so the
    score must be checked too)."""
    column = f"{metric}_p_vs_{baseline}"
    if column not in runs or runs[column].isna().any():
        return False
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return all(p < level and sign * (scores[run] - scores[partner]) > 0
               for run, p, partner in zip(runs["run"], runs[column], runs[f"{metric}_vs_{baseline}"]))


def paper_frame(runs: pd.DataFrame, baselines: dict[str, str], level: float) -> pd.DataFrame:
    """Systems x (test set, metric) cells "mean ± std" with significance marks; `baselines` maps each
    baseline system to its method, which picks its mark."""
    table = {}
    for system, group in runs.groupby("system", sort=False):
        row = {"method": group["method"].iloc[0], "parameters": f"{group['parameters'].iloc[0]:,}",
               "seeds": group["run"].nunique()}
        if group["model_mb"].notna().all():
            row["MB"] = f"{group['model_mb'].mean():.3g}"
        if group["export_mb"].notna().all():
            row["CT2 MB"] = f"{group['export_mb'].mean():.3g}"
        if group["decoding_seconds"].notna().all():  # over every run and test set of the system
            row["sent/s"] = f"{group['sentences'].sum() / group['decoding_seconds'].sum():.1f}"
        for test_set in dict.fromkeys(runs["test_set"]):
            cell_runs = group[group["test_set"] == test_set]
            on_test_set = runs[runs["test_set"] == test_set]
            for metric in scored_metrics(runs):
                scores = dict(zip(on_test_set["run"], on_test_set[metric]))
                values = cell_runs[metric]
                cell = f"{values.mean():.2f}" + (f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else "")
                cell += "".join(MARKS[method] for baseline, method in baselines.items()
                                if better(cell_runs, metric, baseline, level, scores))
                row[f"{test_set} {metric}"] = cell
        table[system] = row
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("system")


def footnote(runs: pd.DataFrame, baselines: dict[str, str], evaluation: EvaluationConfig, cleaning: dict | None,
             overlap_warning: float) -> list[str]:
    test = (f"paired bootstrap, {evaluation.bootstrap_samples} samples"
            if evaluation.significance_test == "paired_bootstrap"
            else f"paired approximate randomisation, {evaluation.randomisation_trials} trials")
    lines = [f"{MARKS[method]} better than {baseline} ({test}, p < {evaluation.significance_level}, every seed pair; "
             "TER: lower)" for baseline, method in baselines.items()]
    lines += ["mean ± sample standard deviation over seeds where a system has several runs; each run's 95% "
              "bootstrap interval is in results.csv (<metric>_ci95)"]
    lines += noise_warnings(runs, baselines, evaluation.usable_bleu)
    if runs["decoding_seconds"].notna().any():
        speed = runs.dropna(subset=["decoding_seconds"]).iloc[0]
        lines.append("MB: fp32 weights; CT2 MB: the CTranslate2 export; sent/s: sentences per second of the "
                     f"pipeline's own beam search over the test sets ({speed['threads']} thread(s), "
                     f"{speed['device']}; measured while the pipeline ran, so other jobs may have shared the machine)")
    for name, overlap in (cleaning or {}).get("eval_overlap", {}).items():
        if overlap["sources"] > overlap_warning:
            lines.append(f"WARNING: {100 * overlap['sources']:.1f}% of the source sentences of {name} were in the "
                         f"raw training data ({cleaning['removed'].get('in_eval_set', 0)} training pairs removed "
                         "as in an evaluation set)")
    for name, blank in (cleaning or {}).get("blank_references", {}).items():
        lines.append(f"WARNING: {blank} references of {name} are blank (data.allow_blank_references): what any "
                     "system outputs there counts against its precision")
    return lines + [f"{'unbabel-comet' if kind == 'comet' else 'sacrebleu'} {kind}: {sig}" for kind in scored_metrics(runs)
                    for sig in sorted(set(runs[f"{kind}_signature"]))]


def noise_warnings(runs: pd.DataFrame, baselines: dict[str, str], usable_bleu: float) -> list[str]:
    """A warning per test set on which every student is below `usable_bleu`: there a significant
    difference (0.26 against 0.21 BLEU) says nothing a user can act on."""
    students = runs[runs["system"] != "teacher"]
    lines = []
    for test_set, group in students.groupby("test_set", sort=False):
        if len(group) and (group["bleu"] < usable_bleu).all():
            marks = " and its marks" if baselines else ""
            lines.append(f"WARNING: on {test_set} every student scores below {usable_bleu:g} BLEU "
                         f"(evaluation.usable_bleu): the ranking of the students{marks} is noise-prone")
    return lines


def latex(table: pd.DataFrame, notes: list[str]) -> str:
    """A booktabs tabular (\\usepackage{booktabs}); the notes become comments under it."""
    escape = lambda s: str(s).replace("&", r"\&").replace("#", r"\#").replace("_", r"\_").replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("‡", r"$^\ddagger$").replace("%", r"\%")
    columns = ["system", *table.columns]
    lines = [r"\begin{tabular}{l" + "l" * (len(columns) - 1) + "}", r"\toprule",
             " & ".join(escape(c) for c in columns) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(v) for v in (name, *row)) + r" \\" for name, row in table.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}", ""] + [f"% {note}" for note in notes]
    return "\n".join(lines) + "\n"


def provenance(config_json: str) -> dict:
    """The resolved experiment plus the code and environment that produced the results."""
    def git(*args):  # of the a2d checkout, wherever the workflow's working directory is
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).resolve().parent).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {**json.loads(config_json), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(status) if status is not None else None, "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions}


def write_tables(metric_paths: list[str], summary_paths: list[str], out_dir: str, *, significance_paths=(),
                 figure_paths=(), baselines: dict[str, str] | None = None, evaluation: EvaluationConfig = EvaluationConfig(),
                 config_json: str = "{}", cleaning_path: str | None = None, cleaning: Cleaning = Cleaning(),
                 speed_paths=(), model_paths=(), export_paths=(), benchmark_paths=()) -> pd.DataFrame:
    """results.md / results.csv / results.tex, training.md / training.csv and provenance.json in `out_dir`."""
    level = evaluation.significance_level
    out = Path(out_dir)
    runs = runs_frame(metric_paths, summary_paths, significance_paths, figure_paths, speed_paths, model_paths,
                      export_paths)
    baselines = baselines or {}
    table = paper_frame(runs, baselines, level)
    report = read_json(cleaning_path) if cleaning_path else None
    notes = footnote(runs, baselines, evaluation, report, cleaning.overlap_warning)
    with atomic_path(out / "results.csv") as tmp:
        runs.drop(columns=["figures"]).to_csv(tmp, index=False)
    with atomic_path(out / "results.tex") as tmp:
        tmp.write_text(latex(table, notes), encoding="utf-8")

    def links(paths: str) -> str:  # relative to the markdown file, so they work where it is viewed
        return " ".join(f"[{Path(p).name.split('.')[1]}]({os.path.relpath(p, out)})" for p in paths.split(";") if p)

    # every run's figures (each seed has its own curves)
    figures = runs.groupby("system", sort=False)["figures"].agg(lambda f: ";".join(dict.fromkeys(";".join(f).split(";"))))
    figures = figures.map(links)
    shown = table.assign(figures=figures)
    text = shown.to_markdown() + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    write_training_table(training_frame(summary_paths, benchmark_paths), out)
    write_json(out / "provenance.json", provenance(config_json))
    return table
