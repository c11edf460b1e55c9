"""The reports of a sweep: sweep.csv, sweep.json, sweep.md and sweep.png in the sweep directory.

They cover the cells of this invocation (unfinished ones listed as such) and every other
finished cell in the directory, e.g. from an earlier invocation with other methods or seeds.
Tables and plot use the achieved sparsity read from each results.json (`global_sparsity`), and
the mean, min and max over seeds of the final test accuracy.

Example:

>>> rows = [{"method": "snip", "target_sparsity": 0.9, "status": "done", "sparsity": 0.9,
...          "test_accuracy": a, "best_test_accuracy": a, "seed": k}
...         for k, a in enumerate((0.90, 0.94))]
>>> _accuracy_text(summarize(rows)[0])
'92.00 [90.00–94.00]'
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import pathlib
import statistics

from kprune._internal.files import write_text_atomic
from kprune.versions import machine
from tools.sweep_cells import COLUMNS, COMMANDS, RESULTS, method_rank, read_cell, report_cells
from tools.sweep_cells import settings as shared_settings


def summarize(rows):
    """Statistics over seeds per (method, target sparsity), finished cells only.

    Each group has `n`, `mean`, `min`, `max` of the test accuracy, the mean best-epoch
    accuracy and the mean, min and max achieved sparsity.

    Example:

    >>> rows = [{"method": "snip", "target_sparsity": 0.9, "status": "done", "sparsity": 0.9,
    ...          "test_accuracy": a, "best_test_accuracy": a, "seed": k}
    ...         for k, a in enumerate((0.90, 0.94))]
    >>> group = summarize(rows)[0]
    >>> group["n"], round(group["mean"], 4), group["min"], group["max"]
    (2, 0.92, 0.9, 0.94)
    """
    groups = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault((row["method"], row["target_sparsity"]), []).append(row)
    summary = []
    for (method, target), members in groups.items():
        accuracy = [r["test_accuracy"] for r in members]
        sparsity = [r["sparsity"] for r in members]
        best = [r["best_test_accuracy"] for r in members if r["best_test_accuracy"] is not None]
        # Every training the cell ran (lth: all rounds), the cost beside the accuracy.
        steps = [r["total_steps"] for r in members if r.get("total_steps") is not None]
        summary.append(
            {
                "method": method,
                "target_sparsity": target,
                "n": len(members),
                "mean": statistics.fmean(accuracy),
                "min": min(accuracy),
                "max": max(accuracy),
                "best_mean": statistics.fmean(best) if best else None,
                "sparsity_mean": statistics.fmean(sparsity),
                "sparsity_min": min(sparsity),
                "sparsity_max": max(sparsity),
                "seeds": sorted(r["seed"] for r in members),
                "steps_mean": statistics.fmean(steps) if steps else None,
            }
        )
    summary.sort(key=lambda g: (method_rank(g["method"]), g["method"], g["target_sparsity"]))
    return summary


def _pct(value, digits=2):
    return f"{100 * value:.{digits}f}"


def _accuracy_text(group):
    text = f"{_pct(group['mean'])} [{_pct(group['min'])}–{_pct(group['max'])}]"
    return text if group["n"] > 1 else _pct(group["mean"])


def _sparsity_heading(value):
    return f"{100 * value:.4f}".rstrip("0").rstrip(".") + "%"


def markdown_report(rows, summary, header_lines=()):
    """The Markdown tables of sweep.md (a string): methods x target sparsities, then one row
    per (method, sparsity) with the achieved sparsity and the accuracy's spread.

    Example:

    >>> print(markdown_report(rows, summarize(rows)))  # doctest: +SKIP
    """
    done = [r for r in rows if r["status"] == "done"]
    models = sorted({f"{r['model']} on {r['dataset']}" for r in done}) or ["(no finished cell)"]
    epochs = sorted({int(r["epochs"]) for r in done})
    epochs_text = "/".join(map(str, epochs)) or "?"
    epochs_text += " epoch" + ("" if epochs == [1] else "s")
    if any(r["method"] == "lth" for r in done):
        epochs_text += "; lth: per round"
    lines = [f"# Sweep: {', '.join(models)}", "", *header_lines]
    lines += [
        f"Test accuracy (%) at the end of training ({epochs_text}): mean over seeds "
        "[min–max]; n = seeds finished. Sparsity = zeros among the prunable weights, read "
        "from results.json (lth reaches its target in whole rounds, so it lands above it).",
        "",
    ]
    by_key = {(g["method"], g["target_sparsity"]): g for g in summary}
    dense = by_key.get(("dense", 0.0))
    if dense:
        lines += [f"**Dense baseline**: {_accuracy_text(dense)} (n = {dense['n']}).", ""]
    methods = sorted(
        {r["method"] for r in rows if r["method"] != "dense"}, key=lambda m: (method_rank(m), m)
    )
    sparsities = sorted({r["target_sparsity"] for r in rows if r["method"] != "dense"})
    if methods:
        lines.append("| method | " + " | ".join(map(_sparsity_heading, sparsities)) + " |")
        lines.append("|---" * (len(sparsities) + 1) + "|")
        for method in methods:
            cells = []
            for target in sparsities:
                group = by_key.get((method, target))
                if group is None:
                    cells.append("—")
                    continue
                text = _accuracy_text(group)
                if abs(group["sparsity_mean"] - target) > 5e-5:
                    text += f" @ {_pct(group['sparsity_mean'])}%"
                cells.append(text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "| method | target sparsity % | achieved sparsity % | test acc. % mean | min | max | "
        "best-epoch acc. % mean | training steps | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in summary:
        best = "—" if g["best_mean"] is None else _pct(g["best_mean"])
        steps = "—" if g["steps_mean"] is None else f"{g['steps_mean']:,.0f}"
        lines.append(
            f"| {g['method']} | {_pct(g['target_sparsity'])} | {_pct(g['sparsity_mean'], 3)} | "
            f"{_pct(g['mean'])} | {_pct(g['min'])} | {_pct(g['max'])} | {best} | {steps} | "
            f"{g['n']} |"
        )
    diverged = [r["cell"] for r in rows if r["status"] == "diverged"]
    if diverged:
        lines += ["", f"Diverged (loss NaN or infinite; {len(diverged)}): {', '.join(diverged)}."]
    missing = [r["cell"] for r in rows if r["status"] not in ("done", "diverged")]
    if missing:
        lines += ["", f"Not finished ({len(missing)}): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def plot(summary, path, title):
    """Draws test accuracy against achieved sparsity to `path` (PNG); False without matplotlib.

    One line per method through the means over seeds, a shaded min-max band, and the dense
    baseline as a horizontal line with its band. The x axis is on a logit scale when every
    point lies in (0, 1), which spreads out 0.9, 0.95, 0.98 and 0.99.

    Example:

    >>> plot(summarize(rows), "sweep.png", "lenet300_100 on digits")  # doctest: +SKIP
    True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    dense = [g for g in summary if g["method"] == "dense"]
    pruned = [g for g in summary if g["method"] != "dense"]
    for method in dict.fromkeys(g["method"] for g in pruned):
        groups = sorted(
            (g for g in pruned if g["method"] == method), key=lambda g: g["sparsity_mean"]
        )
        x = [g["sparsity_mean"] for g in groups]
        mean = [100 * g["mean"] for g in groups]
        low = [100 * g["min"] for g in groups]
        high = [100 * g["max"] for g in groups]
        (line,) = axes.plot(x, mean, marker="o", label=method)
        if len(x) > 1:
            axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            axes.errorbar(x, mean, yerr=[[mean[0] - low[0]], [high[0] - mean[0]]],
                          color=line.get_color(), capsize=3)  # fmt: skip
    for g in dense:
        axes.axhline(100 * g["mean"], color="black", linestyle="--", label=f"dense (n={g['n']})")
        axes.axhspan(100 * g["min"], 100 * g["max"], color="black", alpha=0.1, linewidth=0)
    xs = sorted({g["sparsity_mean"] for g in pruned})
    if xs and all(0.0 < x < 1.0 for x in xs):
        axes.set_xscale("logit")
        logit = [math.log(x / (1 - x)) for x in xs]
        pad = max(0.5, 0.12 * (logit[-1] - logit[0]))  # centres a single sparsity
        left, right = logit[0] - pad, logit[-1] + pad
        axes.set_xlim(1 / (1 + math.exp(-left)), 1 / (1 + math.exp(-right)))
        # A tick at every sparsity reached, except where labels would overlap (lth lands
        # just above its target).
        ticks, last = [], None
        for x, position in zip(xs, logit):
            if last is None or position - last > 0.1 * (right - left):
                ticks.append(x)
                last = position
        axes.set_xticks(ticks)
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}%"))
    axes.set_xlabel("sparsity (zeros among prunable weights, achieved)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if pruned or dense:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _csv_text(rows):
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def write_reports(config, cells):
    """Reads every cell's results.json and writes sweep.csv, .json, .md and .png in `out`.

    The reports cover `cells` (missing ones are listed as such) and every other finished cell
    in `out`, e.g. from an earlier invocation with other methods or seeds.

    Returns:
        `(rows, summary, png_written)`.

    Example:

    >>> rows, summary, png = write_reports(config, plan_cells(config))  # doctest: +SKIP
    """
    rows = [read_cell(config, cell) for cell in report_cells(config, cells)]
    summary = summarize(rows)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.csv", _csv_text(rows))

    # Every invocation that trained here, oldest first (a sweep may be extended several times).
    log = out / COMMANDS
    commands = log.read_text().splitlines() if log.is_file() else []
    done = [r for r in rows if r["status"] == "done"]
    versions = {}
    if done:
        results = json.loads((pathlib.Path(done[0]["run_dir"]) / RESULTS).read_text())
        versions = results.get("versions", {})
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    facts = machine()
    payload = {
        "settings": {
            **shared_settings(config),
            "methods": list(config.methods),
            "sparsities": list(config.sparsities),
            "seeds": list(config.seeds),
            "dense": config.dense,
            "out": str(out),
            "commands": commands,
        },
        "date": date,
        "machine": facts,
        "versions": versions,
        "cells": rows,
        "summary": summary,
    }
    write_text_atomic(out / "sweep.json", json.dumps(payload, indent=2) + "\n")
    header = []
    if commands:
        header += ["Made by (date, command):", "", "```bash", *commands, "```", ""]
    header += [
        f"{len(done)} of {len(rows)} cells finished; written {date} on {facts['cpu_count']} x "
        f"{facts['cpu_model']} ({facts['platform']}); "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("tensorflow", "keras"))
        + ".",
        "",
    ]
    write_text_atomic(out / "sweep.md", markdown_report(rows, summary, header))
    title = ", ".join(sorted({f"{r['model']} on {r['dataset']}" for r in done})) or "sweep"
    png = plot(summary, out / "sweep.png", title) if done else False
    return rows, summary, png
