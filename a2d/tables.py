"""Result tables: one row per system and test set, with the sacrebleu signature on every row and
links to each system's figures."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from a2d.files import atomic_path, read_json

COLUMNS = ["system", "method", "test_set", "bleu", "chrf", "parameters", "bleu_signature", "chrf_signature", "figures"]


def results_frame(metric_paths: list[str], summary_paths: list[str], figure_paths: list[str] = ()) -> pd.DataFrame:
    summaries = {s["system"]: s for s in map(read_json, summary_paths)}
    figures: dict[str, list[str]] = {}
    for path in figure_paths:  # named <system>.<kind>.png
        figures.setdefault(Path(path).name.split(".")[0], []).append(str(path))
    rows = []
    for metrics in map(read_json, metric_paths):
        summary = summaries.get(metrics["system"])
        if summary is None:
            raise ValueError(f"no training summary for system {metrics['system']!r}")
        rows.append({**metrics, "method": summary["method"], "parameters": summary["parameters"],
                     "figures": ";".join(sorted(figures.get(metrics["system"], [])))})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_tables(metric_paths: list[str], summary_paths: list[str], markdown_path: str, csv_path: str,
                 figure_paths: list[str] = ()) -> pd.DataFrame:
    frame = results_frame(metric_paths, summary_paths, figure_paths)
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)

    def links(paths: str) -> str:  # relative to the markdown file, so they work where it is viewed
        return " ".join(f"[{Path(p).name.split('.')[1]}]({os.path.relpath(p, Path(markdown_path).parent)})"
                        for p in paths.split(";") if p)

    shown = frame.drop(columns=["bleu_signature", "chrf_signature"]).assign(figures=frame["figures"].map(links))
    signatures = sorted(set(frame["bleu_signature"])) + sorted(set(frame["chrf_signature"]))
    text = (shown.to_markdown(index=False, floatfmt=".2f", intfmt=",") + "\n\nsacrebleu: "
            + "; ".join(f"`{s}`" for s in signatures) + "\n")
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return frame
