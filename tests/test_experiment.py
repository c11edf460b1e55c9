"""kprune.experiment: flags generated from RunFlags, their bounds, run.flags, the run dir."""

import dataclasses
import types

import pytest
from absl import flags

from kprune.experiment import METHOD_NAMES, METHODS, config, run_config, run_dir

VOLATILE = {"model_dir", "dry_run", "progress", "overwrite", "export", "export_quantize"}
VOLATILE |= {"strategy", "tpu"}


@pytest.fixture
def values():
    flag_values = flags.FlagValues()
    config.define_flags(flag_values)
    return flag_values


def parse(flag_values, *args):
    flag_values(["prog", *args])
    return flag_values


def test_every_field_becomes_a_flag_with_its_default_and_help(values):
    assert sorted(values) == sorted(config.FLAG_NAMES)
    parse(values)
    for field in dataclasses.fields(config.RunFlags):
        flag = values[field.name]
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        assert flag.value == default, field.name
        assert flag.help.endswith(field.metadata["help"]), field.name
    assert values["method"].parser.enum_values == list(METHOD_NAMES) == list(METHODS)


def test_defining_twice_is_a_no_op(values):
    config.define_flags(values)  # would raise DuplicateFlagError if it defined them again
    assert parse(values, "--epochs=3").epochs == 3


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--target_sparsity=1.0", "--target_sparsity must be in [0, 1), 1 excluded."),
        ("--lr=0", "--lr must be > 0."),
        ("--lr_decay_factor=0", "--lr_decay_factor must be in (0, 1]."),
        ("--prune_frequency=0", "--prune_frequency must be in (0, 1]."),
        ("--lr_decay_epochs=ten", "comma-separated list of numbers"),
        ("--momentum=1.5", "not a number in the range [0.0, 1.0]"),
    ],
)
def test_bounds_from_the_spec_stop_parsing(values, arg, message):
    with pytest.raises(flags.IllegalFlagValueError) as err:
        parse(values, arg)
    assert message in str(err.value)


def test_method_options_are_checked_by_their_method_only(values):
    # An fggp option that fggp would refuse does not stop a linear run's parsing.
    assert parse(values, "--fggp_candidate_rate=0", "--lth_rate=1").fggp_candidate_rate == 0
    with pytest.raises(config.UsageError, match=r"must be in \(0, 1\]\. Received: "):
        config.check_bounds("fggp_candidate_rate", 0.0)
    with pytest.raises(config.UsageError, match="--grasp_temperature must be > 0"):
        config.check_bounds("grasp_temperature", 0.0)
    assert config.check_bounds("lth_rate", 0.5) == 0.5
    with pytest.raises(ValueError, match=r"--lth_rate must be in \(0, 1\)\. Received"):
        run_config.lth_rounds(0.9, 1.0)


def test_volatile_flags_stay_out_of_run_flags(values):
    volatile = {f.name for f in dataclasses.fields(config.RunFlags) if f.metadata["volatile"]}
    assert volatile == VOLATILE
    parsed = parse(values, "--model_dir=/tmp/x", "--export=tflite", "--nonesterov", "--seed=4")
    cfg = run_config.config_from_flags(parsed)
    assert not set(cfg.flag_lines) & VOLATILE
    assert cfg.flag_lines["nesterov"] == "--nonesterov" and cfg.flag_lines["seed"] == "--seed=4"
    assert "data_dir" not in cfg.flag_lines  # None: no line
    assert list(cfg.flags) == list(config.FLAG_NAMES)
    assert cfg.run_dir.as_posix() == "/tmp/x" and cfg.export == ("tflite",)


def test_lth_target_and_run_name(values):
    cfg = run_config.config_from_flags(parse(values, "--method=lth", "--lth_rounds=2"))
    assert cfg.target_sparsity == pytest.approx(0.36)
    assert cfg.run_name == "lenet300_100-digits-lth-36"
    dense = run_config.config_from_flags(parse(values, "--method=dense", "--seed=2"))
    assert dense.target_sparsity == 0.0 and dense.run_name == "lenet300_100-digits-dense-seed2"


def fake_config(path, lines, overwrite=False):
    return types.SimpleNamespace(run_dir=path, flag_lines=lines, overwrite=overwrite)


def test_run_dir_new_resume_overwrite(tmp_path):
    lines = {"epochs": "--epochs=4", "download": "--nodownload"}
    target = tmp_path / "run"
    assert run_dir.decide(fake_config(target, lines)) == "new"
    assert run_dir.start(fake_config(target, lines), "new") == target
    assert (target / "run.flags").read_text() == "--epochs=4\n--nodownload\n"
    assert run_dir.read_flagfile(target / "run.flags") == lines
    assert run_dir.decide(fake_config(target, lines)) == "resume"
    other = {**lines, "epochs": "--epochs=5"}
    with pytest.raises(config.UsageError, match=r"different flags \(epochs\)"):
        run_dir.decide(fake_config(target, other))
    assert run_dir.decide(fake_config(target, other, overwrite=True)) == "overwrite"
    run_dir.write_results(target, {"a": 1})
    with pytest.raises(config.UsageError, match="already holds a finished run"):
        run_dir.decide(fake_config(target, lines))
    run_dir.start(fake_config(target, other), "overwrite")
    assert sorted(p.name for p in target.iterdir()) == ["run.flags"]


def test_foreign_directory_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(config.UsageError, match="not a kprune run"):
        run_dir.decide(fake_config(tmp_path, {}, overwrite=True))


def test_the_summary_names_weights_left_dense(values):
    from kprune.experiment import report

    cfg = run_config.config_from_flags(parse(values))
    results = {
        "total_steps": 10,
        "wall_time_s": 1.0,
        "test_accuracy": 0.9,
        "global_sparsity": 0.9,
        "nonzero_params": 10,
        "dense_params": 100,
        "replicas": 1,
        "left_dense": [f"block/w{i}" for i in range(7)],
    }
    text = report.summary_paragraph(cfg, results, "run")
    assert "7 prunable-looking weight(s) were left dense" in text
    assert "block/w0, block/w1, block/w2, block/w3, block/w4, ..." in text
    results["left_dense"] = []
    assert "left dense" not in report.summary_paragraph(cfg, results, "run")


# -- --budget and --scope (issue 14) -----------------------------------------------------------
@pytest.mark.parametrize(
    "args, budget, scope",
    [
        ([], "erk", "erk"),  # the gradual methods' default
        (["--method=polynomial", "--scope=global"], "global", "global"),
        (["--budget=uniform"], "uniform", "layer"),
        (["--budget=uniform", "--scope=layer"], "uniform", "layer"),
        (["--method=snip"], "global", "global"),
        (["--method=snip", "--budget=erk"], "erk", "erk"),
        (["--method=fggp"], "global", "global"),  # FGGP pools globally, as published
        (["--method=lth"], "global", "global"),
    ],
)
def test_budget_and_scope_resolve_to_one_choice(values, args, budget, scope):
    config_ = run_config.config_from_flags(parse(values, *args))
    assert (config_.budget, config_.scope) == (budget, scope)
    # run.flags records the resolved pair, so reusing it as a flagfile means the same run.
    assert config_.flag_lines["budget"] == f"--budget={budget}"
    assert config_.flag_lines["scope"] == f"--scope={scope}"
    assert (config_.flags["budget"], config_.flags["scope"]) == (budget, scope)


def test_contradicting_budget_and_scope_are_a_usage_error(values):
    parse(values, "--budget=global", "--scope=erk")
    with pytest.raises(config.UsageError, match="contradicts --scope=erk"):
        run_config.config_from_flags(values)


def test_lenet5_caffe_gets_its_own_default_learning_rate(values):
    lenet5 = run_config.config_from_flags(parse(values, "--model=lenet5_caffe"))
    assert lenet5.training.learning_rate == config.MODEL_LEARNING_RATES["lenet5_caffe"] == 0.01
    assert lenet5.flag_lines["lr"] == "--lr=0.01"  # run.flags records the rate used
    values.unparse_flags()
    given = run_config.config_from_flags(parse(values, "--model=lenet5_caffe", "--lr=0.05"))
    assert given.training.learning_rate == 0.05
    values.unparse_flags()
    assert run_config.config_from_flags(parse(values)).training.learning_rate == 0.05
