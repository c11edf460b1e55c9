"""Parity: run the Keras model, the SavedModel and the TFLite file on the same inputs, compare.

The TFLite file runs in the LiteRT interpreter (`ai_edge_litert` when installed, else
`tf.lite.Interpreter`), with XNNPACK when it accepts the model. Float32 artifacts are gated
(`ParityError` from `export()`); quantized files are reported, not gated.

Example:

>>> ref = {"y": np.array([[0.0, 1.0], [2.0, 0.0]])}
>>> result = compare_outputs(ref, {"y": ref["y"] + 1e-6})
>>> _passes(result, 0.999, ref)
True
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import PackageNotFoundError, version

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.compat import interpreter_ops_details
from kprune._internal.validate import check_choice, check_integer
from kprune.export.inputs import _chunks, _num_samples
from kprune.export.inspect import _saved_model_weights
from kprune.export.shrinking import SHRINK_TOLERANCE
from kprune.export.tflite import FORMATS, ConversionError

__all__ = ["RUNTIMES", "SIGNATURE_KEY", "ParityError", "compare_outputs", "make_interpreter"]

RUNTIMES = ("auto", "litert", "tflite")
SIGNATURE_KEY = "serving_default"


class ParityError(RuntimeError):
    """A float32 artifact disagrees with the Keras model on too many samples.

    Raised by `export()` after the artifacts and `export_report.json` have been written, so
    they can be inspected; `report` is the report as a dict.

    Example:

    >>> try:
    ...     export(model, "out")  # doctest: +SKIP
    ... except ParityError as e:
    ...     print(e.report["parity"]["failures"])
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def _interpreter_module(runtime):
    """The Interpreter class, its op resolver types, and a label naming it with its version."""
    if runtime in ("auto", "litert"):
        try:
            # Imported on use: ai-edge-litert is an optional dependency (kprune[litert]).
            from ai_edge_litert import interpreter as litert
        except ImportError:
            if runtime == "litert":
                raise ImportError(
                    "runtime='litert' needs the ai-edge-litert package: "
                    "pip install 'kprune[litert]'"
                ) from None
        else:
            try:
                label = f"ai_edge_litert {version('ai-edge-litert')}"
            except PackageNotFoundError:
                label = "ai_edge_litert"
            return litert.Interpreter, litert.OpResolverType, label
    return (
        tf.lite.Interpreter,
        tf.lite.experimental.OpResolverType,
        f"tf.lite.Interpreter (TensorFlow {tf.__version__})",
    )


def make_interpreter(tflite, *, num_threads=None, runtime="auto", xnnpack=True, batch_size=1):
    """A ready LiteRT interpreter, and a note on how it runs the model.

    Uses `ai_edge_litert` when installed (`pip install 'kprune[litert]'`) and
    `tf.lite.Interpreter` otherwise. Inputs are resized to `batch_size`, tensors allocated and
    the model run once on zeros. The default delegate (XNNPACK) is tried first; if it cannot
    prepare or run the model -- LiteRT 2.3 refuses sparse quantized weights, for instance --
    the model runs on the builtin kernels, and `info["xnnpack"]` says so. Keep the input
    shapes fixed afterwards: a resize makes XNNPACK prepare the model again.

    Args:
        tflite: the file contents (bytes) or a path.
        num_threads: CPU threads (None: the runtime's default).
        runtime: `"auto"`, `"litert"` (ai_edge_litert, error if missing) or `"tflite"`
            (`tf.lite.Interpreter`).
        xnnpack: try the XNNPACK delegate first.
        batch_size: leading dimension of every input.

    Returns:
        `(interpreter, info)`, `info` = `{"runtime": str, "xnnpack": bool, "note": str|None}`.

    Example:

    >>> import keras
    >>> from kprune.export import convert_to_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> interpreter, info = make_interpreter(convert_to_tflite(model), batch_size=3)
    >>> info["runtime"].split()[0] in ("ai_edge_litert", "tf.lite.Interpreter")
    True
    >>> interpreter.get_input_details()[0]["shape"].tolist()
    [3, 4]
    """
    check_choice("runtime", runtime, RUNTIMES)
    check_integer("batch_size", batch_size, 1)
    interpreter_class, resolvers, label = _interpreter_module(runtime)
    source = (
        {"model_path": os.fspath(tflite)}
        if isinstance(tflite, (str, os.PathLike))
        else {"model_content": bytes(tflite)}
    )
    attempts = [resolvers.AUTO] if xnnpack else []
    attempts.append(resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    note = None
    for resolver in attempts:
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns that it is deprecated in favour of ai_edge_litert; that
            # is the documented fallback here, not news to the user.
            warnings.simplefilter("ignore", UserWarning)
            interpreter = interpreter_class(
                **source, num_threads=num_threads, experimental_op_resolver_type=resolver
            )
        try:
            for detail in interpreter.get_input_details():
                shape = [batch_size, *detail["shape"][1:]]
                interpreter.resize_tensor_input(detail["index"], shape)
            interpreter.allocate_tensors()
            # XNNPACK may accept a model at allocation and refuse it at the first run.
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except RuntimeError as e:
            if resolver != resolvers.AUTO:
                raise ConversionError(f"{label} could not run the TFLite model: {e}") from e
            note = f"XNNPACK could not prepare the model ({str(e).splitlines()[0]}); "
            note += "it runs on the builtin kernels"
            continue
        delegated = resolver == resolvers.AUTO and any(
            op.get("op_name") == "DELEGATE" for op in interpreter_ops_details(interpreter)
        )
        return interpreter, {"runtime": label, "xnnpack": delegated, "note": note}
    raise AssertionError("unreachable: the builtin attempt returns or raises")


def _keras_outputs(model, spec, samples, chunk):
    """Keras predictions keyed like the serving signature's outputs."""
    parts = []
    for batch in _chunks(samples, chunk):
        x = [batch[n] for n in spec.names]
        y = model(x[0] if len(x) == 1 else x, training=False)
        if isinstance(y, dict):
            named = {k: np.asarray(v) for k, v in y.items()}
        elif isinstance(y, (list, tuple)):
            named = {f"output_{i}": np.asarray(v) for i, v in enumerate(y)}
        else:
            named = {"output_0": np.asarray(y)}
        parts.append(named)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _run_saved_model(loaded, samples, chunk):
    signature = loaded.signatures[SIGNATURE_KEY]
    parts = [
        {k: v.numpy() for k, v in signature(**{n: tf.constant(a) for n, a in b.items()}).items()}
        for b in _chunks(samples, chunk)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _run_tflite(interpreter, samples, chunk):
    """Runs `samples` in batches of `chunk` (the interpreter's batch size), padding the last."""
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    parts = []
    for batch in _chunks(samples, chunk):
        n = _num_samples(batch)
        padded = {
            k: np.concatenate([v, np.zeros((chunk - n, *v.shape[1:]), v.dtype)]) if n < chunk else v
            for k, v in batch.items()
        }
        parts.append({k: np.array(v)[:n] for k, v in runner(**padded).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def compare_outputs(reference, outputs):
    """Max absolute difference and top-1 agreement of `outputs` against `reference`.

    Both are dicts {output name: array (n, ..., classes)}. Top-1 agreement is the fraction of
    samples whose argmax over the last axis is the same; it is None for outputs with a single
    unit, where the check relies on the difference alone.

    Example:

    >>> ref = {"y": np.array([[0.0, 1.0], [2.0, 0.0]])}
    >>> compare_outputs(ref, {"y": np.array([[0.0, 1.5], [0.0, 1.0]])})["top1_agreement"]
    0.5
    """
    if set(reference) != set(outputs):
        raise ValueError(
            f"Outputs differ in names: the Keras model has {sorted(reference)}, the artifact "
            f"{sorted(outputs)}."
        )
    per_output = {}
    for name, ref in reference.items():
        out = np.asarray(outputs[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if out.shape != ref.shape:
            raise ValueError(
                f"Output '{name}' has shape {out.shape} in the artifact and {ref.shape} in "
                "the Keras model."
            )
        agreement = None
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            agreement = float(np.mean(np.argmax(ref, -1) == np.argmax(out, -1)))
        per_output[name] = {
            "max_abs_diff": float(np.max(np.abs(out - ref))) if ref.size else 0.0,
            "top1_agreement": agreement,
        }
    agreements = [
        o["top1_agreement"] for o in per_output.values() if o["top1_agreement"] is not None
    ]
    return {
        "max_abs_diff": max(o["max_abs_diff"] for o in per_output.values()),
        "top1_agreement": min(agreements) if agreements else None,
        "outputs": per_output,
    }


def _passes(result, min_agreement, reference):
    """Float32 gate: top-1 agreement, or (single-unit outputs) a relative difference < 1e-3."""
    if result["top1_agreement"] is not None:
        return result["top1_agreement"] >= min_agreement
    scale = max(1.0, max(float(np.max(np.abs(r))) for r in reference.values()))
    return result["max_abs_diff"] <= 1e-3 * scale


def _parity(
    model,
    spec,
    samples,
    source,
    saved_model_dir,
    tflite_bytes,
    *,
    quantize,
    min_fp32_agreement,
    runtime,
    report,
    exported=None,
    keras_file=None,
):
    """Runs Keras and each artifact on `samples`; adds SavedModel weights to `report`.

    `model` gives the reference outputs; `exported` (default: `model`) is the model the files
    hold, whose weights the SavedModel's are matched to. `keras_file`, the shrunk model saved
    by the export, is loaded back and must match `model` to float tolerance.
    """
    exported = model if exported is None else exported
    chunk = min(32, _num_samples(samples))
    reference = _keras_outputs(model, spec, samples, chunk)
    parity = {
        "samples": _num_samples(samples),
        "data": source,
        "min_fp32_agreement": min_fp32_agreement,
        "failures": [],
    }
    if saved_model_dir is not None:
        loaded = tf.saved_model.load(saved_model_dir)
        result = compare_outputs(reference, _run_saved_model(loaded, samples, chunk))
        result["gated"] = True
        parity["saved_model"] = result
        report["artifacts"]["saved_model"]["weights"] = _saved_model_weights(loaded, exported)
        del loaded
    if tflite_bytes is not None:
        interpreter, info = make_interpreter(tflite_bytes, runtime=runtime, batch_size=chunk)
        result = compare_outputs(reference, _run_tflite(interpreter, samples, chunk))
        result.update(info)
        result["gated"] = quantize == "none"
        parity["tflite"] = result
    for name in FORMATS:
        result = parity.get(name)
        if result is None or not result["gated"]:
            continue
        if not _passes(result, min_fp32_agreement, reference):
            agreement = result["top1_agreement"]
            parity["failures"].append(
                f"{name}: top-1 agreement {agreement:.4%} < {min_fp32_agreement:.2%}"
                if agreement is not None
                else f"{name}: max |difference| {result['max_abs_diff']:.3g} too large"
            )
    if keras_file is not None:
        loaded = keras.models.load_model(keras_file, compile=False)
        result = compare_outputs(reference, _keras_outputs(loaded, spec, samples, chunk))
        scale = max(1.0, max(float(np.max(np.abs(r))) for r in reference.values()))
        result["tolerance"] = SHRINK_TOLERANCE * scale
        result["gated"] = True
        parity["keras"] = result
        if result["max_abs_diff"] > result["tolerance"]:
            parity["failures"].append(
                f"keras (shrunk model): max |difference| {result['max_abs_diff']:.3g} > "
                f"{result['tolerance']:.3g}"
            )
    parity["passed"] = not parity["failures"]
    return parity
