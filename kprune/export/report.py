"""The export report: sizes against a dense baseline, weights read back, and the printed table.

Sizes are raw bytes and gzip bytes (a deterministic gzip, so reports are reproducible) of each
artifact, next to those of a dense export of the same architecture, which is what the pruning
saves on a device or a download.

Example:

>>> _sizes(250, 200, 1000, 400)["ratio"], _sizes(250, 200, 1000, 400)["gzip_ratio"]
(0.25, 0.5)
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import keras

from kprune.export.inspect import NM_PATTERNS, _match_keras_weights, read_tflite_weights
from kprune.export.shrinking import format_shrink_lines
from kprune.export.tflite import FORMATS, TFLITE_FILE, _convert_saved_model

__all__ = ["format_export_report"]


def _gzip_size(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _dir_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


def _file_gzip_size(path):
    with open(path, "rb") as f:
        return _gzip_size(f.read())


def _dir_gzip_size(path):
    """Size of a deterministic gzipped tar of a directory (sorted names, no timestamps)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                info = tarfile.TarInfo(os.path.relpath(full, path))
                info.size = os.path.getsize(full)
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    return _gzip_size(raw.getvalue())


def _sizes(bytes_, gzip_bytes, dense_bytes, dense_gzip_bytes):
    return {
        "bytes": bytes_,
        "gzip_bytes": gzip_bytes,
        "dense_bytes": dense_bytes,
        "dense_gzip_bytes": dense_gzip_bytes,
        "ratio": bytes_ / dense_bytes if dense_bytes else None,
        "gzip_ratio": gzip_bytes / dense_gzip_bytes if dense_gzip_bytes else None,
    }


def _dense_twin(model):
    """A model to measure the dense export with, and a sentence saying what it is.

    Preferably the same architecture with fresh weights (a model that was never pruned); if
    the model cannot be cloned (e.g. it contains a subclassed model), the model itself, whose
    zeros then flatter the dense gzip size (raw bytes are unaffected).
    """
    try:
        twin = keras.models.clone_model(model)
    except Exception as e:  # subclassed parts, custom layers without get_config, ...
        return model, (
            f"same weights stored densely (the model could not be cloned: {type(e).__name__}); "
            "raw bytes are those of a dense model, gzip bytes are smaller than a dense "
            "model's because the zeros compress"
        )
    return twin, (
        "same architecture, freshly initialized weights, same converter settings without "
        "sparse encoding"
    )


def _tflite_entry(tflite_bytes, quantize, twin, twin_dir, calibration, keras_rows):
    """Sizes against the dense twin, and the weights read back from the file."""
    dense = dense_fp32 = None
    if twin_dir:
        dense = _convert_saved_model(
            twin_dir, twin, sparse=False, quantize=quantize, calibration=calibration
        )
        dense_fp32 = dense
        if quantize != "none":
            dense_fp32 = _convert_saved_model(
                twin_dir, twin, sparse=False, quantize="none", calibration=None
            )
    entry = {"path": TFLITE_FILE, "quantize": quantize, "sparse_encoding": True}
    entry.update(
        _sizes(
            len(tflite_bytes),
            _gzip_size(tflite_bytes),
            len(dense) if dense else None,
            _gzip_size(dense) if dense else None,
        )
    )
    entry["dense_fp32_bytes"] = len(dense_fp32) if dense_fp32 else None
    entry["ratio_vs_dense_fp32"] = len(tflite_bytes) / len(dense_fp32) if dense_fp32 else None
    weights = _match_keras_weights(read_tflite_weights(tflite_bytes), keras_rows)
    entry["weights"] = weights
    notes = []
    if any(r["matched_by"] == "size and order" for r in weights):
        notes.append(
            "Some weight tensors carry no layer name in the file (the converter renames "
            "sparse tensors after the op they feed); they were matched to Keras weights "
            "by element count in layer order."
        )
    if any(r["nonzero"] is None for r in weights):
        notes.append(
            "Zeros of tensors with non-zero quantization zero-points cannot be counted "
            "from the stored values; their sparsity is null."
        )
    if quantize != "none":
        notes.append(
            "Quantization can round small weights to zero, so a quantized tensor may have "
            "fewer non-zeros than its Keras weight."
        )
    if entry["ratio"] is not None and entry["ratio"] > 1:
        notes.append(
            "The sparse file is larger than the dense one: at this sparsity the index arrays "
            "of the sparse format cost more than the zeros they replace (common with int8 "
            "weights below ~60-70% sparsity)."
        )
    entry["notes"] = notes
    return entry


def _fmt_bytes(n):
    return "-" if n is None else f"{n:,}"


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.3f}x"


def _nm_lines(rows):
    """The N:M table: per Dense/Conv kernel, whether each pattern holds (yes/no)."""
    if not rows:
        return []
    lines = [
        "",
        "N:M patterns of the Keras kernels (at most N non-zeros in every M along the input axis)",
        f"{'keras weight':<32} " + " ".join(f"{p:>5}" for p in NM_PATTERNS),
    ]
    for row in rows:
        marks = " ".join(f"{'yes' if row[p] else 'no':>5}" for p in NM_PATTERNS)
        lines.append(f"{row['weight'][:32]:<32} {marks}")
    return lines


def format_export_report(report):
    """Renders an export report as fixed-width tables (a string).

    Example:

    >>> import tempfile
    >>> from kprune.export import export
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     report = export(model, tmp, formats="tflite", compare_dense=False, verbose=False)
    >>> print(format_export_report(report))  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    export of 'sequential...' (quantize=none); dense baseline: not measured (compare_dense=False)
    artifact bytes gzip bytes dense bytes dense gzip ratio gzip ratio
    tflite (none, sparse) ... - - - -
    ...
    parity: ok
    """
    lines = [
        f"export of '{report['model']}' (quantize={report['quantize']}); dense baseline: "
        f"{report['dense_baseline']}",
        f"{'artifact':<22} {'bytes':>12} {'gzip bytes':>12} {'dense bytes':>12} "
        f"{'dense gzip':>12} {'ratio':>8} {'gzip ratio':>10}",
    ]
    for name, entry in report["artifacts"].items():
        label = name if name != "tflite" else f"tflite ({entry['quantize']}, sparse)"
        lines.append(
            f"{label:<22} {_fmt_bytes(entry['bytes']):>12} {_fmt_bytes(entry['gzip_bytes']):>12} "
            f"{_fmt_bytes(entry['dense_bytes']):>12} {_fmt_bytes(entry['dense_gzip_bytes']):>12} "
            f"{_fmt_ratio(entry['ratio']):>8} {_fmt_ratio(entry['gzip_ratio']):>10}"
        )
        if name == "tflite" and entry["quantize"] != "none":
            lines.append(
                f"{'':<22} vs dense float32 TFLite ({_fmt_bytes(entry['dense_fp32_bytes'])} "
                f"bytes): {_fmt_ratio(entry['ratio_vs_dense_fp32'])}"
            )
    if report.get("shrink"):
        lines.extend(format_shrink_lines(report["shrink"]))
    tflite = report["artifacts"].get("tflite")
    if tflite:
        lines.append("")
        lines.append("weights read back from model.tflite")
        lines.append(
            f"{'keras weight':<32} {'op':<18} {'shape':<16} {'encoding':<8} {'dtype':<8} "
            f"{'nonzero':>9} {'total':>10} {'sparsity':>8} {'keras':>8}"
        )
        for row in tflite["weights"]:
            keras_sparsity = (
                "-"
                if row["keras_nonzero"] is None
                else f"{1 - row['keras_nonzero'] / row['total']:.2%}"
            )
            sparsity = "-" if row["sparsity"] is None else f"{row['sparsity']:.2%}"
            nonzero = "-" if row["nonzero"] is None else str(row["nonzero"])
            lines.append(
                f"{(row['weight'] or '(' + row['tensor'][:30] + ')')[:32]:<32} "
                f"{row['op'][:18]:<18} {'x'.join(map(str, row['shape']))[:16]:<16} "
                f"{row['encoding']:<8} {row['dtype']:<8} {nonzero:>9} {row['total']:>10} "
                f"{sparsity:>8} {keras_sparsity:>8}"
            )
        for note in tflite["notes"]:
            lines.append(f"note: {note}")
    lines.extend(_nm_lines(report.get("nm_patterns") or []))
    parity = report["parity"]
    lines.append("")
    lines.append(f"parity with Keras on {parity['samples']} samples ({parity['data']})")
    for name in (*FORMATS, "keras"):
        result = parity.get(name)
        if result is None:
            continue
        agreement = result["top1_agreement"]
        how = ""
        if name == "tflite":
            how = f" [{result['runtime']}, {'XNNPACK' if result['xnnpack'] else 'builtin kernels'}]"
        gate = f"gate >= {parity['min_fp32_agreement']:.2%}" if result["gated"] else "not gated"
        if name == "keras":
            gate = f"gate: max |diff| <= {result['tolerance']:.3g}"
        lines.append(
            f"  {name:<12} max |diff| {result['max_abs_diff']:.3g}, top-1 agreement "
            f"{'-' if agreement is None else f'{agreement:.2%}'} ({gate}){how}"
        )
    lines.append(
        "parity: " + ("ok" if parity["passed"] else "FAILED: " + "; ".join(parity["failures"]))
    )
    return "\n".join(lines)
