"""Train and prune one model: python -m kprune.train [--flagfile=configs/NAME.flags] [--flag=value]

With no flags it runs the offline default job (configs/digits.flags): LeNet-300-100 on the
bundled handwritten digits, pruned on the linear schedule until 90% of its weights are zero.

Flags, by group (--helpfull lists them all with their defaults and bounds):
  model & data   --model --dataset --data_dir --download --exclude
  method         --method --target_sparsity --initial_sparsity --scope
  schedule       --prune_begin --prune_end --prune_frequency (fractions of training) or
                 --prune_begin_step --prune_end_step --prune_frequency_steps (steps; they win);
                 --polynomial_power; --cycles --cycle_ramp --cycle_start_sparsity
  training       --epochs --batch_size --optimizer --momentum --nesterov --lr --lr_schedule
                 --lr_decay_epochs --lr_decay_factor --lr_warmup_epochs --weight_decay
                 --label_smoothing --seed --mixed_precision --eval_every_epoch
  distribution   --strategy --tpu
  output         --model_dir --overwrite --export --export_quantize --dry_run --progress

Flags given on the command line override those of a --flagfile (absl reads them in order).
--dry_run builds the model and the pruning plan and prints them without loading data or
writing files. Bad input (unknown names, values out of range, a missing flagfile, an unusable
dataset) exits with status 2 before anything is written.

Exit status: 0 done (or a dry run); 1 an unexpected error; 2 bad input, nothing written (also
a --model_dir that cannot be written or is in use by another run); 3 the exported files disagree
with the Keras model; 4 training diverged (the loss became NaN or infinite): every output is
written and results.json says "diverged": true.

Outputs go to --model_dir (default saved_models/<model>-<dataset>-<method>-<sparsity>):
run.flags, logs/ (TensorBoard), checkpoints/ (resume: run again with the same flags),
model.keras (pruned and stripped), results.json, export/ (with --export).
With --strategy=multi_worker the chief writes --model_dir and every other worker the same files
to <model_dir>.<task>_<index> (e.g. run.worker_1), from which it resumes.
"""

from __future__ import annotations

import sys

from absl import app, flags

from kprune import experiment

# Names that tools/sweep.py and tests import from here; they live in kprune.experiment.
from kprune.experiment import METHOD_NAMES, METHODS, STRATEGY_NAMES, lth_rounds
from kprune.export import ParityError

__all__ = ["METHODS", "METHOD_NAMES", "STRATEGY_NAMES", "cli", "lth_rounds", "main"]

FLAGS = flags.FLAGS
DIVERGED = 4  # the exit status of a run whose loss became NaN or infinite
experiment.define_flags(FLAGS)
# The flags are defined in kprune.experiment.config; adopting them makes --help list them as
# this program's own (absl's --help shows only the main module's key flags).
flags.adopt_module_key_flags(experiment.config)


def _report_usage_error(err):
    sys.stderr.write(f"error: {err}\n")
    return 2


def main(argv):
    """absl entry point (flags are parsed): runs the experiment, returns the exit status.

    0: done (or a dry run); 2: bad input, nothing written; 3: the exported files disagree with
    the Keras model (every output is written, results.json says so too); 4: training diverged
    (every output is written, results.json says `"diverged": true`; 4 wins over 3).
    """
    if len(argv) > 1:
        return _report_usage_error(
            f"unexpected arguments {argv[1:]}; flags are written --name=value."
        )
    try:
        results = experiment.run(experiment.config_from_flags(FLAGS), echo=print)
    except experiment.UsageError as err:
        return _report_usage_error(err)
    except ParityError as err:
        sys.stderr.write(f"error: exported files disagree with the Keras model: {err}\n")
        return 3
    if results is not None and results["diverged"]:
        sys.stderr.write(
            "error: training diverged (the loss became NaN or infinite) and was stopped; "
            'results.json says "diverged": true. Lower --lr or check the data.\n'
        )
        return DIVERGED
    return 0


def _parse_flags(argv):
    """absl flags parser that exits with status 2 (not 1) on bad flags or a missing flagfile."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        sys.stderr.write(f"error: {err}\nSee --helpfull for every flag.\n")
        sys.exit(2)


def cli(argv):
    """Runs the command line in-process (for tests): parses `argv`, returns the exit status.

    Flags are reset to their defaults first, so calls do not leak into each other.

    Example:

    >>> cli(["kprune.train", "--dry_run"])  # doctest: +SKIP
    0
    """
    FLAGS.unparse_flags()
    try:
        remaining = _parse_flags(list(argv))
        return main(remaining)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        FLAGS.unparse_flags()


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
