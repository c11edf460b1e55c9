"""Export a pruned Keras model for deployment: SavedModel and sparse TFLite, with checks.

`export(model, out_dir)` writes, into `out_dir`:

* `saved_model/`: a TensorFlow SavedModel made by Keras 3 `model.export`, with a
  `serving_default` signature whose inputs carry the names of the model's `keras.Input`s;
* `model.tflite`: a TFLite (LiteRT) flatbuffer converted with
  `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`, so zero-heavy weight tensors are stored in a
  compressed sparse format; optionally with dynamic-range int8 weights (`quantize="dynamic"`)
  or fully int8 (`quantize="int8"`, calibrated on a representative dataset);
* `export_report.json`: sizes (bytes and gzip bytes) of each artifact next to those of a
  dense export of the same architecture, the sparsity of every weight tensor as read back from
  the exported files, and a parity check of each artifact against the Keras model.

A model pruned with `granularity="channel"` is shrunk first (`kprune.shrink`, see
`shrinking`): the files hold the smaller model, `model.keras` is added (the shrunk Keras model,
plain Keras layers), the parity check compares them with the masked model, and the report's
`shrink` section gives parameters, MACs and bytes dense vs shrunk. `shrink=False` exports the
masked model with its zeros instead.

All files are written into a temporary directory next to `out_dir`, which replaces `out_dir`
only once everything has been converted and checked, so a failed export leaves nothing behind.

The steps live in submodules: `inputs` (the model and its input samples), `shrinking` (the
shrunk model of a channel-pruned one), `tflite`
(SavedModel and TFLite conversion), `inspect` (weights read back from the files), `parity`
(the interpreter and the comparison with Keras) and `report` (sizes and the table). The
command line is `python -m kprune.export` (`__main__.py`):

    python -m kprune.export --model=run/model.keras --out=run/export --quantize=int8 \\
        --data_npz=calibration.npz

Example:

>>> from kprune.export import export
>>> report = export(kprune.strip(pruned), "export/")  # doctest: +SKIP
>>> report["artifacts"]["tflite"]["ratio"]  # sparse bytes / dense bytes  # doctest: +SKIP
0.15
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil

from kprune._internal.validate import check_choice, check_fraction, check_integer
from kprune.api import sparsity_report
from kprune.export.inputs import _InputSpec, _take_samples, load_keras_model
from kprune.export.inspect import nm_pattern_rows, read_tflite_weights
from kprune.export.out_dir import prepare_out_dir, remove_stale_temp_dirs, replace_dir, temp_dir
from kprune.export.parity import (
    RUNTIMES,
    ParityError,
    _parity,
    compare_outputs,
    make_interpreter,
)
from kprune.export.report import (
    _dense_twin,
    _dir_bytes,
    _dir_gzip_size,
    _file_gzip_size,
    _sizes,
    _tflite_entry,
    format_export_report,
)
from kprune.export.shrinking import (
    KERAS_FILE,
    SHRINK_MODES,
    _check_shrink,
    _models_to_export,
    _shrink_bytes,
)
from kprune.export.tflite import (
    FORMATS,
    QUANTIZE_MODES,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    ConversionError,
    _calibration,
    _convert_saved_model,
    _export_saved_model,
    convert_to_tflite,
)
from kprune.versions import versions

__all__ = [
    "FORMATS",
    "QUANTIZE_MODES",
    "SHRINK_MODES",
    "ConversionError",
    "ParityError",
    "compare_outputs",
    "convert_to_tflite",
    "export",
    "format_export_report",
    "load_keras_model",
    "make_interpreter",
    "read_tflite_weights",
]

REPORT_FILE = "export_report.json"

_logger = logging.getLogger(__name__)


def _check_formats(formats):
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        formats = list(formats)
    except TypeError:
        raise TypeError(
            f"`formats` must be a sequence of names from {FORMATS} (or a comma-separated "
            f"string). Received: formats={formats!r}"
        ) from None
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ValueError(
            f"`formats` must name one or more of {FORMATS}. Received: formats={formats!r}"
        )
    return tuple(f for f in FORMATS if f in formats)


def export(
    model,
    out_dir,
    formats=FORMATS,
    quantize="none",
    representative_data=None,
    *,
    eval_data=None,
    num_eval_samples=256,
    num_calibration_samples=100,
    min_fp32_agreement=0.999,
    compare_dense=True,
    overwrite=False,
    runtime="auto",
    shrink="auto",
    verbose=True,
):
    """Exports a (pruned) Keras model as SavedModel and sparse TFLite, checked and measured.

    The model is stripped first if it contains `PruningWrapper`s, and shrunk if it was pruned
    by channel (see `shrink`). Everything is written into a
    temporary directory next to `out_dir` that replaces `out_dir` only when all conversions
    have succeeded, so an error leaves no partial file behind.

    Parity: the Keras model, the SavedModel (`serving_default` signature, named inputs) and
    the TFLite model (LiteRT interpreter) are run on `num_eval_samples` samples. For each
    artifact the report gives the max absolute difference to Keras and the top-1 agreement
    (argmax over the last axis). Float32 artifacts -- the SavedModel, and the TFLite file when
    `quantize="none"` -- must agree on at least `min_fp32_agreement` of the samples (outputs
    with one unit: max difference <= 1e-3 * max(1, max |output|)); otherwise the artifacts
    and the report are still written and `ParityError` is raised. Quantized files are
    reported, not gated.

    Dense baseline: the same architecture with freshly initialized weights (a model that was
    never pruned), exported with the same settings minus the sparse encoding. Its raw bytes
    are what an unpruned model of this architecture costs; its gzip bytes are realistic for
    trained dense weights, which do not compress much. A model that cannot be cloned (one with
    a subclassed part) is measured against its own weights stored densely; `dense_baseline`
    in the report says which.

    Channel pruning: with channel masks (`kprune.prune(..., granularity="channel")`), the
    files hold `kprune.shrink(model)`, the smaller model without the removed channels, and
    `out_dir` also gets `model.keras`, that model as a Keras file (plain Keras layers: it loads
    without kprune). Parity compares every file with the masked model; the shrunk Keras model
    (read back from `model.keras`) must match it to float tolerance (max difference <= 1e-3 *
    max(1, max |output|)). The dense baseline is the unshrunk architecture, and the report's
    `shrink` section gives the parameters, the MACs per example (`kprune.count_macs`) and the
    bytes of each artifact, dense vs shrunk, and the channels each layer keeps.

    Args:
        model: a built `keras.Model`, pruned (wrapped) or stripped.
        out_dir: directory to create (or replace, with `overwrite=True`).
        formats: any of `("saved_model", "tflite")`, or a comma-separated string.
        quantize: `"none"`, `"dynamic"` (int8 weights, float activations) or `"int8"` (int8
            weights and activations, calibrated on `representative_data`; float32 inputs and
            outputs). Applies to the TFLite file; both quantized modes keep the sparse
            encoding where the converter supports it.
        representative_data: model inputs for int8 calibration: a NumPy array (single input),
            a dict {input name: array}, a `tf.data.Dataset` or any iterable of batches or
            single samples, whose elements are inputs or `(inputs, targets[, weights])`
            tuples (inputs: array, dict, or tuple of arrays in input order). Typically the
            training pipeline.
        eval_data: model inputs for the parity check, in the same forms; defaults to
            `representative_data`, else synthetic samples (uniform in [0, 1)).
        num_eval_samples: samples for the parity check.
        num_calibration_samples: samples of `representative_data` for int8 calibration.
        min_fp32_agreement: top-1 agreement that float32 artifacts must reach, in [0, 1].
        compare_dense: also convert a dense model of the same architecture for the size
            comparison (doubles the conversion time).
        overwrite: replace a non-empty `out_dir`.
        runtime: TFLite interpreter for the parity check: `"auto"` (ai_edge_litert if
            installed, else tf.lite.Interpreter), `"litert"` or `"tflite"`.
        shrink: `"auto"`: shrink a model that holds channel masks, export any other model as
            it is (stripped); `True`: shrink, also a plain model (e.g. the stripped
            `model.keras` of a channel-pruning run), which loses every channel whose weights
            are all zero (a warning if there is none); `False`: never shrink (a
            channel-pruned model keeps its zeros).
        verbose: log the report as a table (`logging`, level INFO, logger `kprune.export`);
            `python -m kprune.export` prints it.

    Returns:
        The report (also written to `out_dir/export_report.json`), a JSON-compatible dict.

    Raises:
        TypeError / ValueError: bad arguments (each names the argument and the value), a
            non-empty `out_dir` without `overwrite`, `quantize="int8"` without
            `representative_data`, or `shrink=True` for a model with weight-level masks.
            Nothing is written.
        ConversionError: the model cannot be exported or converted; the message names the
            layer and the op where the converter says which. Nothing is written.
        ParityError: a float32 artifact disagrees with Keras; the files are written.

    Example:

    >>> import keras, tempfile
    >>> model = keras.Sequential([keras.Input((784,), name="pixels"),
    ...                           keras.layers.Dense(300, activation="relu"),
    ...                           keras.layers.Dense(10)])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     report = export(model, os.path.join(tmp, "lenet_export"), verbose=False)
    ...     print(sorted(os.listdir(os.path.join(tmp, "lenet_export"))))
    ['export_report.json', 'model.tflite', 'saved_model']
    >>> report["parity"]["passed"], report["artifacts"]["tflite"]["weights"][0]["shape"]
    (True, [300, 784])
    """
    formats = _check_formats(formats)
    check_choice("quantize", quantize, QUANTIZE_MODES)
    check_choice("runtime", runtime, RUNTIMES)
    if quantize != "none" and "tflite" not in formats:
        raise ValueError(
            f"`quantize` applies to the TFLite file, but formats={formats!r} has no 'tflite'. "
            f"Received: quantize={quantize!r}"
        )
    check_integer("num_eval_samples", num_eval_samples, 1)
    check_integer("num_calibration_samples", num_calibration_samples, 1)
    min_fp32_agreement = check_fraction("min_fp32_agreement", min_fp32_agreement)
    shrink = _check_shrink(shrink)
    model, reference, shrink_section = _models_to_export(model, shrink)
    spec = _InputSpec(model)
    if quantize == "int8" and representative_data is None:
        _calibration(spec, quantize, None, num_calibration_samples)  # raises the clear error
    out_dir, created = prepare_out_dir(out_dir, overwrite)
    remove_stale_temp_dirs(out_dir)  # what an interrupted export to out_dir left behind
    with temp_dir(out_dir) as tmp:
        try:
            report = _export_into(
                model,
                tmp,
                spec,
                reference=reference,
                shrink_section=shrink_section,
                formats=formats,
                quantize=quantize,
                representative_data=representative_data,
                eval_data=eval_data,
                num_eval_samples=num_eval_samples,
                num_calibration_samples=num_calibration_samples,
                min_fp32_agreement=min_fp32_agreement,
                compare_dense=compare_dense,
                runtime=runtime,
            )
            with open(os.path.join(tmp, REPORT_FILE), "w") as f:
                json.dump(report, f, indent=2)
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for path in created:  # parents we made for out_dir, innermost first
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise
    if verbose:
        _logger.info("%s", format_export_report(report))
    if not report["parity"]["passed"]:
        raise ParityError(
            "Exported model disagrees with the Keras model: "
            + "; ".join(report["parity"]["failures"])
            + f". Artifacts and report kept in {out_dir!r} for inspection.",
            report,
        )
    return report


def _export_into(
    model,
    tmp,
    spec,
    *,
    reference,
    shrink_section,
    formats,
    quantize,
    representative_data,
    eval_data,
    num_eval_samples,
    num_calibration_samples,
    min_fp32_agreement,
    compare_dense,
    runtime,
):
    """Writes the artifacts into `tmp` and returns the report (the caller writes it).

    `model` is what the files hold; `reference` the Keras model they are compared with (the
    masked model when `model` is its shrunk version, else `model` itself).
    """
    work = os.path.join(tmp, ".work")  # scratch space inside tmp: removed with it on error
    os.makedirs(work)
    saved_model_dir = os.path.join(tmp if "saved_model" in formats else work, SAVED_MODEL_DIR)
    _export_saved_model(model, saved_model_dir)
    calibration = _calibration(spec, quantize, representative_data, num_calibration_samples)
    keras_report = sparsity_report(model)
    report = {
        "format_version": 1,
        "model": model.name,
        "versions": versions(),
        "formats": list(formats),
        "quantize": quantize,
        "keras_sparsity": {
            "prunable": keras_report["prunable"],
            "all_params": keras_report["all_params"],
        },
        "dense_baseline": None,
        "artifacts": {},
        "nm_patterns": nm_pattern_rows(model),
    }
    if shrink_section is not None:
        report["shrink"] = shrink_section
    # A shrunk model is measured against the dense model of the architecture it came from.
    twin, report["dense_baseline"] = (
        _dense_twin(reference) if compare_dense else (None, "not measured (compare_dense=False)")
    )
    twin_dir = None
    if twin is model:
        twin_dir = saved_model_dir
    elif twin is not None:
        twin_dir = os.path.join(work, "dense_saved_model")
        _export_saved_model(twin, twin_dir)

    if "saved_model" in formats:
        entry = {"path": SAVED_MODEL_DIR}
        entry.update(
            _sizes(
                _dir_bytes(saved_model_dir),
                _dir_gzip_size(saved_model_dir),
                _dir_bytes(twin_dir) if twin_dir else None,
                _dir_gzip_size(twin_dir) if twin_dir else None,
            )
        )
        report["artifacts"]["saved_model"] = entry
    tflite_bytes = None
    if "tflite" in formats:
        tflite_bytes = _convert_saved_model(
            saved_model_dir, model, sparse=True, quantize=quantize, calibration=calibration
        )
        with open(os.path.join(tmp, TFLITE_FILE), "wb") as f:
            f.write(tflite_bytes)
        report["artifacts"]["tflite"] = _tflite_entry(
            tflite_bytes, quantize, twin, twin_dir, calibration, keras_report["layers"]
        )
    keras_file = None
    if shrink_section is not None:
        keras_file = os.path.join(tmp, KERAS_FILE)
        model.save(keras_file)
        twin_file = None
        if twin is not None:
            twin_file = os.path.join(work, "dense.keras")
            twin.save(twin_file)
        entry = {"path": KERAS_FILE}
        entry.update(
            _sizes(
                os.path.getsize(keras_file),
                _file_gzip_size(keras_file),
                os.path.getsize(twin_file) if twin_file else None,
                _file_gzip_size(twin_file) if twin_file else None,
            )
        )
        report["artifacts"]["keras"] = entry
        _shrink_bytes(report)

    if eval_data is not None:
        samples = _take_samples(eval_data, num_eval_samples, spec, "eval_data")
        source = "eval_data"
    elif representative_data is not None:
        samples = _take_samples(representative_data, num_eval_samples, spec, "representative_data")
        source = "representative_data"
    else:
        samples, source = spec.synthetic(num_eval_samples), "synthetic uniform [0, 1) inputs"
    report["parity"] = _parity(
        reference,
        spec,
        samples,
        source,
        saved_model_dir if "saved_model" in formats else None,
        tflite_bytes,
        quantize=quantize,
        min_fp32_agreement=min_fp32_agreement,
        runtime=runtime,
        report=report,
        exported=model,
        keras_file=keras_file,
    )
    shutil.rmtree(work)
    return report
