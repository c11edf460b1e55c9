"""`python -m kprune.export`: a saved `.keras` model to SavedModel and TFLite (see `--help`).

Exit status: 0 exported and checked; 1 bad flags or input, or a failed conversion (nothing
written); 3 written, but a float32 artifact failed the parity check.

Example:

    python -m kprune.export --model=run/model.keras --out=run/export --quantize=int8 \\
        --data_npz=calibration.npz
"""

# This docstring is the header of `--help`. The flags are declared by `define_flags`, called
# only when this file runs as a program, so importing `kprune.export` (as
# `python -m kprune.train --export` does) adds no flags.

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from kprune.export import (
    FORMATS,
    QUANTIZE_MODES,
    ConversionError,
    ParityError,
    export,
    format_export_report,
    load_keras_model,
)
from kprune.export.inputs import _InputSpec, _plain_model

__all__ = ["define_flags", "main", "run"]

_SHRINK_FLAG = {"auto": "auto", "true": True, "false": False}  # --shrink -> export(shrink=)


def define_flags(flag_values=flags.FLAGS):
    """Declares the `python -m kprune.export` flags on `flag_values`.

    They are declared only when the module runs as a program (or when a caller asks), never
    on import, so `from kprune.export import export` adds no flags to the importing program
    (e.g. `python -m kprune.train`, which has a `--dataset` flag of its own).

    Example:

    >>> fv = flags.FlagValues()
    >>> define_flags(fv)
    >>> fv(["export", "--model=m.keras", "--out=out"])
    ['export']
    >>> fv.quantize, fv.formats
    ('none', ['saved_model', 'tflite'])
    """
    flags.DEFINE_string(
        "model", None, "Keras model file (.keras) to export.", flag_values=flag_values
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=flag_values)
    flags.DEFINE_list(
        "formats",
        list(FORMATS),
        f"Comma-separated formats from {FORMATS}.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "quantize",
        "none",
        list(QUANTIZE_MODES),
        "TFLite quantization: none (float32), dynamic (int8 weights) or int8 (full integer; "
        "needs --dataset or --data_npz).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "Dataset name for kprune.data.load_dataset: int8 calibration from its training split, "
        "parity samples from its test split.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "tensorflow-datasets data directory for --dataset (as in python -m kprune.train).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_npz",
        None,
        "A .npz file of model inputs: one array (single input) or one array per input name. "
        "Used for int8 calibration and the parity check.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "eval_samples", 256, "Samples for the parity check.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "calibration_samples",
        100,
        "Samples for int8 calibration.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "min_agreement",
        0.999,
        "Top-1 agreement with Keras that float32 artifacts must reach.",
        lower_bound=0.0,
        upper_bound=1.0,
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "compare_dense", True, "Also export a dense twin for sizes.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "shrink",
        "auto",
        list(_SHRINK_FLAG),
        "Write the smaller model of a channel-pruned one (kprune.shrink): auto (when the model "
        "holds channel masks), true (also a stripped model: its all-zero channels are removed) "
        "or false (export the masked model with its zeros).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=flag_values)
    flags.mark_flags_as_required(["model", "out"], flag_values=flag_values)


def _load_npz(path, spec):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    missing = [n for n in spec.names if n not in arrays]
    if missing:
        raise ValueError(
            f"--data_npz {path!r} holds arrays {sorted(arrays)}; with several arrays their names "
            f"must be the model's input names {spec.names} (missing {missing})."
        )
    return {n: arrays[n] for n in spec.names}


def _named_dataset(name, data_dir=None, batch_size=32):
    """(training inputs, test inputs) of a dataset known to `kprune.data.load_dataset`."""
    # Imported on use: kprune.data loads tensorflow-datasets, which is slow to import.
    from kprune import data as data_lib

    datasets = data_lib.load_dataset(name, batch_size=batch_size, data_dir=data_dir)
    return datasets.train, datasets.test


EXIT_ERROR = 1  # the conversion or the file system failed
EXIT_USAGE = 2  # bad input (model file, flags, data): the message says what to change
EXIT_PARITY = 3


def run(flag_values):
    """Runs an export from parsed flags; returns the process exit status.

    0: exported and checked; 1: the conversion or the file system failed; 2: bad input
    (model file, flags, data; nothing written); 3: written, but a float32 artifact failed
    the parity check.

    Example:

    >>> fv = flags.FlagValues()
    >>> define_flags(fv)
    >>> _ = fv(["export", "--model=no/such/model.keras", "--out=out"])
    >>> run(fv)  # the message goes to stderr
    2
    """
    fv = flag_values
    try:
        model = load_keras_model(fv.model)
        spec = _InputSpec(_plain_model(model))
        representative = evaluation = None
        if fv.data_npz:
            representative = evaluation = _load_npz(fv.data_npz, spec)
        if fv.dataset:
            representative, evaluation = _named_dataset(fv.dataset, fv.data_dir)
        report = export(
            model,
            fv.out,
            formats=fv.formats,
            quantize=fv.quantize,
            representative_data=representative,
            eval_data=evaluation,
            num_eval_samples=fv.eval_samples,
            num_calibration_samples=fv.calibration_samples,
            min_fp32_agreement=fv.min_agreement,
            compare_dense=fv.compare_dense,
            overwrite=fv.overwrite,
            shrink=_SHRINK_FLAG[fv.shrink],
            verbose=False,  # the table is printed here: library code only logs
        )
    except ParityError as e:
        print(format_export_report(e.report))
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PARITY
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ConversionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(format_export_report(report))
    print(f"wrote {os.path.abspath(fv.out)}")
    return 0


def main(argv):
    """absl entry point: exits with the status of `run(flags.FLAGS)`."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    sys.exit(run(flags.FLAGS))


if __name__ == "__main__":
    define_flags()
    app.run(main)
