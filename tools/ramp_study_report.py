"""Issue 14 study: the results JSON (written compactly) and the markdown tables of saved results.

`write_json` writes what tools/ramp_study.py measured; `markdown` prints the tables of
docs/ramp_study.md from one or more such files (`python tools/ramp_study.py --summarize=...`).
"""

from __future__ import annotations

import json

import numpy as np


def rounded(value, digits=6):
    """`value` with every float rounded to `digits` significant digits (smaller JSON)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def write_json(path, results):
    """One line per run (the runs hold every mask update), the rest indented."""
    results = rounded(results)
    lists = {k: results.pop(k) for k in ("runs", "nan", "cli_check")}
    text = json.dumps(results, indent=1, default=str)[:-2]
    for key, rows in lists.items():
        body = ",\n".join("  " + json.dumps(row, default=str) for row in rows)
        text += f',\n "{key}": [\n{body}\n ]' if rows else f',\n "{key}": []'
    with open(path, "w") as f:
        f.write(text + "\n}\n")


# -- markdown tables of saved results ----------------------------------------------------------
def _pct(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0] * 100:.{digits}f}"
    low, high = min(values) * 100, max(values) * 100
    return f"{np.mean(values) * 100:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _removed_late(run, fraction=0.1):
    """Fraction of the weights alive at 90% of the window that the last 10% removed."""
    end = run["window"]["end_step"]
    late = [u for u in run["updates"] if u["step"] > (1 - fraction) * end]
    if not late:
        return None
    return 1 - late[-1]["kept_after"] / late[0]["kept_before"]


def markdown(paths):
    runs, nan, cli = [], [], []
    for path in paths:
        with open(path) as f:
            loaded = json.load(f)
        runs += loaded["runs"]
        nan += loaded["nan"]
        cli += loaded["cli_check"]
    lines = []
    dense = [r["final_acc"] for r in runs if r["method"] == "dense"]
    if dense:
        lines += [f"Dense: {_pct(dense)} (mean (min-max) over {len(dense)} seeds)", ""]

    def key(r):
        scope = "erk" if r["recipe"].get("budget") == "erk" else r["scope"]
        return r["recipe_name"], scope, r["sparsity"], r["method"]

    groups = {}
    for r in runs:
        if r["method"] != "dense":
            groups.setdefault(key(r), []).append(r)
    lines += [
        "| recipe | scope | sparsity | method | seeds | final | best epoch | before last update "
        "| after last update | lr at last update | removed by last update | removed in last 10% "
        "of window |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, scope, sparsity, method), group in sorted(groups.items()):
        last = [g["updates"][-1] for g in group]
        lines.append(
            f"| {name} | {scope} | {sparsity:.2f} | {method} | {len(group)} "
            f"| {_pct([g['final_acc'] for g in group])} "
            f"| {_pct([g['best_epoch_acc'] for g in group])} "
            f"| {_pct([u['acc_before'] for u in last])} | {_pct([u['acc_after'] for u in last])} "
            f"| {np.mean([u['lr'] for u in last]):.4f} "
            f"| {_pct([u['removed_of_survivors'] for u in last], 1)} "
            f"| {_pct([_removed_late(g) for g in group], 1)} |"
        )
    lines += ["", "| recipe | sparsity | linear | polynomial | linear - polynomial (per seed) "
              "| linear - dense mean |", "|---|---|---|---|---|---|"]  # fmt: skip
    dense_mean = np.mean(dense) if dense else None
    pairs = sorted({(n, sc, sp) for n, sc, sp, m in groups})
    for name, scope, sparsity in pairs:
        lin = {g["seed"]: g["final_acc"] for g in groups.get((name, scope, sparsity, "linear"), [])}
        poly = {
            g["seed"]: g["final_acc"] for g in groups.get((name, scope, sparsity, "polynomial"), [])
        }
        common = sorted(set(lin) & set(poly))
        diffs = [lin[s] - poly[s] for s in common]
        to_dense = (
            f"{(np.mean(list(lin.values())) - dense_mean) * 100:+.2f}"
            if lin and dense_mean is not None
            else "n/a"
        )
        label = name if scope == "global" else f"{name} ({scope})"
        diff_text = (
            f"{np.mean(diffs) * 100:+.2f} ({min(diffs) * 100:+.2f} to {max(diffs) * 100:+.2f})"
            if diffs
            else "n/a"
        )
        lines.append(
            f"| {label} | {sparsity:.2f} | {_pct(list(lin.values()))} "
            f"| {_pct(list(poly.values()))} | {diff_text} | {to_dense} |"
        )
    lines += ["", "| recipe | scope | sparsity | method | fc1 | fc2 | logits | fc1 units cut off "
              "| fc2 units cut off | classes with no incoming weight |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, scope, sparsity, method), group in sorted(groups.items()):
        if name not in ("cli", "erk", "hold", "hold_erk"):
            continue
        cells = []
        for layer in ("fc1", "fc2", "logits"):
            cells.append(_pct([g["layers"][layer]["sparsity"] for g in group], 1))
        cut = []
        for layer in ("fc1", "fc2"):
            # A unit with no incoming or no outgoing weight is cut off from the output.
            counts = [
                max(g["dead_units"][layer]["no_incoming"], g["dead_units"][layer]["no_outgoing"])
                for g in group
            ]
            cut.append(f"{np.mean(counts):.1f} (max {max(counts)})")
        classes = [g["dead_units"]["logits"]["no_incoming"] for g in group]
        lines.append(
            f"| {name} | {scope} | {sparsity:.2f} | {method} | {' | '.join(cells)} "
            f"| {cut[0]} | {cut[1]} | {np.mean(classes):.1f} (max {max(classes)}) |"
        )
    if nan:
        lines += ["", "| LeNet-5-Caffe configuration | diverged | first non-finite step | loss at "
                  "step 0 | gradient norm at step 0 | val. accuracy after the steps |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        configs = {}
        for r in nan:
            configs.setdefault(r["config"], []).append(r)
        for name, group in configs.items():
            bad = [
                g["first_nonfinite_step"] for g in group if g["first_nonfinite_step"] is not None
            ]
            lines.append(
                f"| {name} | {len(bad)}/{len(group)} | {', '.join(map(str, bad)) or '-'} "
                f"| {np.mean([g['init_loss'] for g in group]):.2f} "
                f"| {np.mean([g['first_grad_norms'][0] for g in group]):.1f} "
                f"| {_pct([g['val_acc_after'] for g in group], 1)} |"
            )
    for c in cli:
        lines.append(
            f"\nCLI `{c['command']}`: {c['test_accuracy'] * 100:.2f}; "
            f"rebuilt recipe: {c['rebuilt_final_acc'] * 100:.2f}"
        )
    print("\n".join(lines))
