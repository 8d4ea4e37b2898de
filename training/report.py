"""The training report: a Markdown page with a metrics table and ROC / PR / calibration /
feature-importance plots, written into the version's folder."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.evaluate import curves


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(out_dir: Path, y_true: np.ndarray, scores: Mapping[str, np.ndarray]) -> dict[str, str]:
    """ROC, PR and reliability plots with one line per model; returns file names."""
    plt = _figure()
    drawn = {name: curves(y_true, proba) for name, proba in scores.items()}
    files = {}
    for key, title, xlabel, ylabel in (
        ("roc", "ROC on the time-ordered holdout", "false positive rate", "true positive rate"),
        ("pr", "Precision-recall on the holdout", "recall", "precision"),
        (
            "reliability",
            "Calibration (reliability) on the holdout",
            "mean predicted probability",
            "observed conflict rate",
        ),
    ):
        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
        for name, c in drawn.items():
            x, y = c[key]
            ax.plot(x, y, marker="o" if key == "reliability" else None, markersize=3, label=name)
        if key == "roc":
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        if key == "reliability":
            top = max(float(np.max(c["reliability"][0])) for c in drawn.values())
            ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
        if key == "pr":
            ax.axhline(float(np.mean(y_true)), color="grey", linestyle=":", linewidth=1, label="conflict rate")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        files[key] = f"{key}.png"
        fig.savefig(out_dir / files[key])
        plt.close(fig)
    return files


def plot_importances(out_dir: Path, importances: Mapping[str, float]) -> str:
    plt = _figure()
    ordered = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    ax.barh([k for k, _ in ordered], [v for _, v in ordered], color="#4c72b0")
    ax.set_title("Permutation importance (drop in holdout PR-AUC)")
    ax.set_xlabel("mean decrease")
    fig.tight_layout()
    fig.savefig(out_dir / "importances.png")
    plt.close(fig)
    return "importances.png"


def _row(name: str, m: Mapping[str, Any]) -> str:
    def f(key: str) -> str:
        value = m.get(key)
        return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.4f}"

    return (
        f"| {name} | {f('roc_auc')} | {f('pr_auc')} | {f('brier')} | {f('ece')} | "
        f"{f('precision')} | {f('recall')} | {f('f1')} |"
    )


def _interval(metrics: Mapping[str, Any], intervals: Mapping[str, tuple[float, float]], key: str) -> str:
    low, high = intervals.get(key, (float("nan"), float("nan")))
    return f"{metrics[key]:.4f} [{low:.4f}, {high:.4f}]"


def selection_section(
    holdout_metrics: Mapping[str, Mapping[str, Any]],
    intervals: Mapping[str, Mapping[str, tuple[float, float]]],
    *,
    reason: str,
    notes: Sequence[str],
) -> list[str]:
    """The shipped model next to the seed baseline, with 95% bootstrap intervals and positives."""
    rows = [
        f"| {name} | {_interval(m, intervals[name], 'roc_auc')} | {_interval(m, intervals[name], 'pr_auc')} | "
        f"{_interval(m, intervals[name], 'brier')} | {_interval(m, intervals[name], 'ece')} | "
        f"{m['positives']} of {m['samples']} |"
        for name, m in holdout_metrics.items()
        if name in intervals
    ]
    return [
        f"Selection: {reason}.",
        *(f"- {note}" for note in notes),
        "",
        "| model | ROC-AUC [95% CI] | PR-AUC [95% CI] | Brier [95% CI] | ECE [95% CI] | holdout positives |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Intervals: percentile bootstrap over resampled holdout rows (300 rounds).",
    ]


def decision_section(policy: Mapping[str, Any]) -> list[str]:
    """The model's sync_now / fetch_first / warn_user thresholds, the costs, and what they save."""
    t, costs, cost = policy["thresholds"], policy["costs"], policy["holdout_cost_per_decision"]
    fetch = (
        f"`fetch_first` from p = {t['fetch_first']:.4f}, "
        if t["fetch_first"] < t["warn_user"]
        else "never `fetch_first`, "
    )
    warn = f"`warn_user` from p = {t['warn_user']:.4f}" if t["warn_user"] <= 1 else "never `warn_user`"
    return [
        f"`sync_now` below p = {t['fetch_first']:.4f}, {fetch}{warn} "
        "(the actions of least expected cost on calibrated probabilities).",
        "",
        f"Costs: a conflict resolved by hand {costs['manual_resolution']:g}, an extra fetch {costs['extra_fetch']:g}, "
        f"interrupting the user {costs['user_interruption']:g}; a fetch first avoids "
        f"{costs['fetch_avoids_fraction']:.0%} of conflicts.",
        "",
        "| policy on the holdout | mean cost per decision |",
        "|---|---|",
        f"| this model's cost-aware thresholds | {cost['cost_aware']:.4f} |",
        f"| fixed bands (heuristics') on this model | {cost['fixed_bands']:.4f} |",
        f"| always sync_now | {cost['always_sync_now']:.4f} |",
    ]


def write_report(
    out_dir: Path,
    *,
    version: str,
    algorithm: str,
    params: Mapping[str, Any],
    holdout_metrics: Mapping[str, Mapping[str, Any]],
    extra_rows: Mapping[str, Mapping[str, Any]],
    sweep: Sequence[tuple[dict[str, Any], dict[str, float]]],
    plots: Mapping[str, str],
    gate_reason: str,
    split: Mapping[str, Any],
    sections: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write ``report.md`` (and ``metrics.json``) into ``out_dir``; return the report path."""
    candidate = holdout_metrics[version]
    cm = candidate["confusion_matrix"]
    lines = [
        f"# Conflict model {version}",
        "",
        f"Algorithm: **{algorithm}**, calibrated on a later time slice. Gate: {gate_reason}.",
        "",
        "## Data",
        "",
        *(f"- {k}: {v}" for k, v in split.items()),
        "",
        "## Holdout metrics (newest 20%, time-ordered)",
        "",
        "| model | ROC-AUC | PR-AUC | Brier | ECE | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
        *(_row(name, m) for name, m in holdout_metrics.items()),
        *(_row(name, m) for name, m in extra_rows.items()),
        "",
        f"Precision, recall and F1 at the operating threshold {candidate['threshold']:.2f}.",
        "",
        *(line for title, body in (sections or {}).items() for line in (f"## {title}", "", *body, "")),
        "### Confusion matrix of the candidate",
        "",
        "| | predicted no conflict | predicted conflict |",
        "|---|---|---|",
        f"| actual no conflict | {cm['tn']} | {cm['fp']} |",
        f"| actual conflict | {cm['fn']} | {cm['tp']} |",
        "",
        "### Classification report",
        "",
        "```",
        pd.DataFrame(candidate["classification_report"]).T.round(4).to_string(),
        "```",
        "",
        "## Plots",
        "",
        *(f"![{k}]({v})" for k, v in plots.items()),
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(params, indent=2, default=str),
        "```",
        "",
        "## Sweep (validation: newest slice of the training part)",
        "",
        "| model | val PR-AUC | val ROC-AUC | respects feature directions |",
        "|---|---|---|---|",
        *(
            f"| {c['model']} | {s['val_pr_auc']:.4f} | {s['val_roc_auc']:.4f} | {'yes' if s['selectable'] else 'no'} |"
            for c, s in sorted(sweep, key=lambda r: -r[1]["val_pr_auc"])
        ),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    (out_dir / "metrics.json").write_text(
        json.dumps({"holdout": holdout_metrics, "baselines": extra_rows, "split": split}, indent=2, default=str)
    )
    return path
