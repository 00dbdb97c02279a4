"""The Optuna sweeper's pieces without training: search-space grammar, sampler and pruner
nodes, the settings check, storages, stored studies, pruning at the last epoch, the
cluster-store warning, and the summary of a sweep dir."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from runner.sweeps.job import SweepJob, unescape
from runner.sweeps.manifest import job_key, update_manifest
from runner.sweeps.optuna_parts import (
    SweepConfigError,
    build_pruner,
    build_sampler,
    open_storage,
    shown_storage,
)
from runner.sweeps.optuna_study import plan_study
from runner.sweeps.optuna_trial import report_and_check, tell_trial, trial_result
from runner.sweeps.search_space import distribution_of, search_space, space_to_json
from runner.sweeps.stored_study import MONITOR_ATTR, SPACE_ATTR, continued_sampler
from runner.sweeps.stores import cluster_store_warning
from runner.sweeps.summary import summarize
from tests.conftest import CONF
from tests.sweeps.sweep_dirs import finished_job

PRESET = CONF / "hparams_search" / "optuna.yaml"


def _nothing():
    return contextlib.nullcontext()


def space(line: str):
    return distribution_of(OverridesParser.create().parse_override(line))


def sweep_cfg(tmp_path: Path, *overrides: str):
    """The composed config of `python run.py -m hparams_search=optuna OVERRIDES`, hydra node
    included, with the study in tmp_path."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", "hparams_search=optuna", *overrides],
            return_hydra_config=True,
        )


def plan(tmp_path: Path, *overrides: str, arguments: tuple[str, ...] = (), **kwargs):
    return plan_study(sweep_cfg(tmp_path, *overrides), list(arguments), **kwargs)


def test_the_override_grammar_maps_to_optuna_distributions():
    lr = space("optim.lr=tag(log, interval(1e-5, 1e-1))")
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (1e-5, 1e-1)
    smoothing = space("loss.label_smoothing=interval(0.0, 0.2)")
    assert not smoothing.log
    assert isinstance(space("model.depth=interval(2, 8)"), optuna.distributions.FloatDistribution)
    batch = space("trainer.batch_size=tag(int, log, interval(16, 256))")
    assert isinstance(batch, optuna.distributions.IntDistribution) and batch.log
    epochs = space("trainer.max_epochs=range(2, 10, 2)")
    assert (epochs.low, epochs.high, epochs.step) == (2, 8, 2)  # stop excluded, like range()
    model = space("model=choice(resnet18, convnext_tiny)")
    assert model.choices == ("resnet18", "convnext_tiny")
    assert space("seed=0,1,2").choices == (0, 1, 2)
    # Refused as "low <= high must hold, but got (low=10, high=2)", though Hydra takes it.
    assert space("trainer.max_epochs=range(10, 2, -2)").choices == (10, 8, 6, 4)
    with pytest.raises(ValueError, match=r"max_epochs=range\(2, 2\): this range holds no value"):
        space("trainer.max_epochs=range(2, 2)")


def test_the_presets_study_is_named_after_the_data_and_model_options(tmp_path):
    """`${model.name}` failed (a raw traceback) for a model without that key (resnet32)."""
    assert plan(tmp_path, "model=resnet32").study_name == "digits-resnet32"
    assert plan(tmp_path).study_name == "digits-resnet10t"


def test_a_single_value_is_not_a_search_space():
    with pytest.raises(ValueError, match=r"hydra.sweeper.params.optim.lr='0.1'.*interval"):
        space("optim.lr=0.1")


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        # These tags were dropped without a word: a log search ran on a linear scale.
        ("optim.lr=tag(Log, interval(1e-4, 1e-1))", "would drop tag(Log, ...)"),
        ("trainer.batch_size=tag(log, range(16, 257))", "would drop tag(log, ...)"),
        ("optim.lr=tag(log, choice(0.1, 0.2))", "would drop tag(log, ...)"),
        # Truncated to interval(1, 10).
        ("trainer.batch_size=tag(int, interval(1.5, 10.7))", "needs whole-number ends"),
        # "reaches 1.0, which is invalid: expected an integer >= 1" said no more.
        ("trainer.max_epochs=interval(1, 3)", "interval() draws floats: search whole numbers"),
    ],
)
def test_a_tag_the_search_would_drop_or_a_float_range_of_an_integer_key_is_named(
    argument, expected
):
    (problem,) = search_space({}, [argument]).problems
    assert expected in problem and problem.startswith(argument.split("=")[0])


def test_a_command_line_that_does_not_parse_is_a_problem_not_a_crash(tmp_path):
    found = search_space({"optim.lr": "interval(0.001, 0.1)"}, ["seed=choice(0, 1"])
    assert "optim.lr" in found.space and found.fixed == [] and found.spelled == {}
    assert len(found.problems) == 1 and "the command line does not parse" in found.problems[0]
    with pytest.raises(SweepConfigError, match="the command line does not parse"):
        plan(tmp_path, arguments=("seed=choice(0, 1",), open_store=False)


def test_a_swept_key_the_command_line_adds_keeps_its_plus_and_a_value_fixes_a_key():
    found = search_space(
        {"optim.lr": "interval(0.001, 0.1)", "seed": "0,1"},
        ["+loss.fail=raise,none", "seed=3", "trainer.max_epochs=2"],
    )
    assert sorted(found.space) == ["loss.fail", "optim.lr"]
    assert found.spelled == {"loss.fail": "+loss.fail"}
    assert found.fixed == ["seed=3", "trainer.max_epochs=2"] and found.problems == []


def test_a_single_value_in_the_presets_params_fixes_its_key_as_hydras_sweeper_does(tmp_path):
    """`optim.weight_decay: 0.01` in a search file was refused as "not a search space",
    though Hydra's Optuna sweeper (whose files README says work here) fixes the key."""
    preset = {"optim.lr": "interval(0.001, 0.1)", "optim.weight_decay": "0.01", "seed": "3"}
    found = search_space(preset, ["seed=4"])
    assert list(found.space) == ["optim.lr"] and found.problems == []
    assert found.fixed == ["optim.weight_decay=0.01", "seed=4"]  # the command line wins
    (problem,) = search_space({**preset, "trainer.max_epochs": "0"}, []).problems
    assert problem.startswith("hydra.sweeper.params.trainer.max_epochs=0 is invalid: expected")
    fixed = plan(tmp_path, "+hydra.sweeper.params.optim.weight_decay=0.02", open_store=False)
    assert "optim.weight_decay=0.02" in fixed.fixed and "optim.weight_decay" not in fixed.space
    with pytest.raises(SweepConfigError, match=r"optim\.wd: the config has no such key"):
        plan(tmp_path, "+hydra.sweeper.params.optim.wd=0.02", open_store=False)


@pytest.mark.parametrize(
    ("option", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("grid", optuna.samplers.GridSampler),
        ("qmc", optuna.samplers.QMCSampler),
    ],
)
def test_every_sampler_option_is_a_target_node_that_builds(tmp_path, option, kind):
    finite = ("optim.lr=0.001,0.01", "trainer.max_epochs=range(1, 3)")
    # Optuna marks QMCSampler experimental (not deprecated), and says so once it is built.
    experimental = option == "qmc"
    with pytest.warns(optuna.exceptions.ExperimentalWarning) if experimental else _nothing():
        found = plan(
            tmp_path,
            "hydra.sweeper.params=null",
            f"hydra/sweeper/sampler={option}",
            arguments=finite,
        )
    assert isinstance(found.sampler, kind)
    node = sweep_cfg(tmp_path, f"hydra/sweeper/sampler={option}").hydra.sweeper.sampler
    assert node._target_ == f"optuna.samplers.{kind.__name__}" and node.seed == 0  # ${seed}


def test_tpe_writes_out_optuna_5_defaults_and_takes_command_line_options(tmp_path):
    node = sweep_cfg(tmp_path).hydra.sweeper.sampler
    assert OmegaConf.to_container(node, resolve=True) == {
        "_target_": "optuna.samplers.TPESampler",
        "seed": 0,
        "n_startup_trials": 10,
        "multivariate": True,
        "constant_liar": True,
    }
    found = plan(tmp_path, "hydra.sweeper.sampler.n_startup_trials=2", "seed=7")
    assert found.sampler._n_startup_trials == 2  # what the sampler was built with
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation (or other) warning from Optuna
        plan(tmp_path)


@pytest.mark.parametrize(
    ("option", "kind"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_every_pruner_option_is_a_target_node_that_builds(tmp_path, option, kind):
    found = plan(tmp_path, f"hydra/sweeper/pruner={option}", "trainer.max_epochs=9")
    assert isinstance(found.pruner, kind)
    if option == "hyperband":
        assert found.pruner_node["max_resource"] == 9  # ${trainer.max_epochs}
    assert isinstance(build_pruner(found.pruner_node), kind)  # as the jobs build it


def test_the_median_presets_pruner_leaves_every_trials_first_epoch_alone(tmp_path):
    """Its n_warmup_steps: 1 said "epochs never pruned", but Optuna prunes from step
    n_warmup_steps on and the steps are the epochs from 1: trials were pruned at epoch 1."""
    study = optuna.create_study(direction="maximize", pruner=plan(tmp_path).pruner)
    for _ in range(3):  # the preset's n_startup_trials
        trial = study.ask()
        for epoch in (1, 2):
            trial.report(0.9, step=epoch)
        study.tell(trial, 0.9)
    poor = study.ask()
    poor.report(0.1, step=1)
    assert not poor.should_prune()
    poor.report(0.1, step=2)
    assert poor.should_prune()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Failed at TPE's first own draw, after its startup trials had trained: no summary.
        (
            (
                "+hydra.sweeper.sampler.n_ei_candidates=0",
                "hydra.sweeper.sampler.n_startup_trials=1",
            ),
            "hydra.sweeper.sampler: Optuna refuses its settings when it is used (ValueError",
        ),
        # Failed at every report, as a storage problem: nothing was ever pruned.
        (
            ("hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.reduction_factor=1"),
            "hydra.sweeper.pruner: Optuna refuses its settings when it is used (ZeroDivision",
        ),
    ],
)
def test_settings_optuna_refuses_only_in_use_are_refused_at_start(tmp_path, overrides, expected):
    with pytest.raises(SweepConfigError, match=re.escape(expected)):
        plan(tmp_path, *overrides)


def test_a_sampler_or_pruner_given_by_name_still_works(tmp_path):
    found = plan(tmp_path, "hydra.sweeper.sampler=random", "hydra.sweeper.pruner=none")
    assert isinstance(found.sampler, optuna.samplers.RandomSampler)
    assert isinstance(found.pruner, optuna.pruners.NopPruner)


def test_grid_needs_finite_values_and_names_are_checked():
    with pytest.raises(SweepConfigError, match="sampler=grid needs finite values, but lr"):
        build_sampler("grid", {"lr": space("optim.lr=interval(0.1, 1.0)")})
    with pytest.raises(SweepConfigError, match=r"sampler='bayes' is not an Optuna sampler"):
        build_sampler("bayes", {})


def test_every_bad_setting_is_named_in_one_error(tmp_path):
    overrides = (
        "hydra.sweeper.n_trials=0",
        "hydra.sweeper.n_jobs=0",
        "hydra.sweeper.direction=up",
        "+hydra.sweeper.sampler.bogus=1",
        "hydra.sweeper.pruner._target_=os.system",
        "hydra.sweeper.storage=redis://x",
    )
    with pytest.raises(SweepConfigError) as raised:
        plan(tmp_path, *overrides)
    message = str(raised.value)
    assert message.startswith("Invalid Optuna sweep (6 problems)")
    for expected in (
        "hydra.sweeper.n_trials=0 is invalid: expected an integer >= 1",
        "hydra.sweeper.n_jobs=0",
        "hydra.sweeper.direction='up' is invalid",
        "unexpected keyword argument 'bogus'",
        "hydra.sweeper.pruner._target_='os.system' is not an Optuna pruner",
        "hydra.sweeper.storage='redis://x' is invalid",
    ):
        assert expected in message, expected
    with pytest.raises(SweepConfigError, match="multi-objective studies are not supported"):
        plan(tmp_path, "hydra.sweeper.direction=[maximize,minimize]")
    with pytest.raises(SweepConfigError, match="the search space is empty"):
        plan(tmp_path, "hydra.sweeper.params=null")
    # Each job opened its own empty database: no trial reached, none ever pruned.
    with pytest.raises(SweepConfigError, match=r":memory:' is a new empty database for each"):
        plan(tmp_path, "hydra.sweeper.storage=sqlite:///:memory:")
    # A misspelt key: the sweep started, and its first trial failed on Hydra's error.
    typo = ("optim.learning_rate=interval(1e-4, 1e-2)",)
    with pytest.raises(SweepConfigError) as raised:
        plan(tmp_path, arguments=typo)
    assert "optim.learning_rate: the config has no such key" in str(raised.value)
    assert "optim has: lr, weight_decay" in str(raised.value)
    assert plan(tmp_path, arguments=("+optim.extra=interval(0.1, 0.2)",))  # added with +


def test_command_line_ranges_replace_the_presets_and_constants_fix_a_key(tmp_path):
    found = plan(tmp_path, arguments=("optim.lr=interval(0.5,0.9)", "loss.label_smoothing=0.1"))
    lr = found.space["optim.lr"]
    assert (lr.low, lr.high, lr.log) == (0.5, 0.9, False)  # not the preset's 1e-4..3e-2
    assert "loss.label_smoothing" not in found.space  # fixed by the command line
    assert "loss.label_smoothing=0.1" in found.fixed
    assert set(found.space) == {"optim.lr", "optim.weight_decay"}
    own = plan(tmp_path, "hydra.sweeper.params=null", arguments=("model=choice(a, b)",))
    assert set(own.space) == {"model"}  # the preset's space replaced by the user's


def test_the_search_space_example_in_the_preset_works_as_written(tmp_path):
    """conf/hparams_search/optuna.yaml's comment shows how to change a range."""
    (example,) = [
        line.lstrip("# ").strip()
        for line in PRESET.read_text().splitlines()
        if line.lstrip("# ").startswith("python run.py -m hparams_search=optuna '")
    ]
    arguments = shlex.split(example)[3:]  # after `python run.py -m`
    parsed = OverridesParser.create().parse_overrides(arguments)
    constant = [o.input_line for o in parsed if not o.is_sweep_override()]
    assert "hparams_search=optuna" in constant  # composed, as Hydra composes a sweep's base
    found = plan(tmp_path, *constant, arguments=tuple(arguments))
    lr = found.space["optim.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)


def test_storage_null_is_an_in_memory_study(tmp_path):
    found = plan(tmp_path, "hydra.sweeper.storage=null")
    assert found.storage is None
    assert not (tmp_path / "optuna.db").exists()


def test_a_stored_study_over_another_space_or_direction_is_refused(tmp_path):
    first = plan(tmp_path)
    study = optuna.create_study(
        study_name=first.study_name,
        storage=open_storage(first.storage),
        direction=first.direction,
    )
    study.set_user_attr(SPACE_ATTR, space_to_json(first.space))
    assert plan(tmp_path).space.keys() == first.space.keys()  # the same space continues
    with pytest.raises(SweepConfigError) as raised:
        plan(tmp_path, arguments=("optim.lr=interval(0.5, 0.9)",))
    message = str(raised.value)
    assert "was searched over {" in message and "optim.lr: interval(0.0001, 0.03) log" in message
    assert "this command searches {" in message and "optim.lr: interval(0.5, 0.9)" in message
    assert "hydra.sweeper.study_name=<new name>" in message
    with pytest.raises(SweepConfigError, match="was started to maximize; this command would min"):
        plan(tmp_path, "trainer.monitor=val/loss", "trainer.monitor_mode=min")
    # A study kept before the space was: its trials' distributions are compared.
    old = optuna.create_study(study_name="old", storage=open_storage(first.storage))
    old.ask({"optim.lr": space("optim.lr=interval(0.1, 0.2)")})
    with pytest.raises(SweepConfigError, match=r"optim.lr: interval\(0.1, 0.2\)"):
        plan(tmp_path, "hydra.sweeper.study_name=old", "trainer.monitor_mode=min")


def test_a_stored_study_of_another_metric_is_refused(tmp_path):
    """Its trial values were val/acc: val/macro_f1 values would join them unnoticed."""
    first = plan(tmp_path)
    study = optuna.create_study(
        study_name=first.study_name, storage=open_storage(first.storage), direction="maximize"
    )
    study.set_user_attr(MONITOR_ATTR, "val/acc")
    assert plan(tmp_path).monitor == "val/acc"
    with pytest.raises(SweepConfigError, match=r"holds val/acc values .*return val/macro_f1"):
        plan(tmp_path, "trainer.monitor=val/macro_f1")


def test_a_direction_against_the_monitor_or_a_launcher_that_does_not_wait_is_refused(tmp_path):
    with pytest.raises(SweepConfigError) as raised:
        plan(tmp_path, "hydra.sweeper.direction=minimize", "hydra/launcher=slurm_submit")
    message = str(raised.value)
    assert "direction=minimize contradicts trainer.monitor_mode=max (val/acc)" in message
    assert "use hydra/launcher=slurm" in message  # it marked every trial FAIL, then stopped


def test_a_continued_study_draws_new_points(tmp_path):
    """The same seed drew the first command's points again (TPE starts at random)."""
    config = sweep_cfg(tmp_path)
    first = plan_study(config, [], open_store=False)
    assert continued_sampler(config, first, 0) is first.sampler

    def drawn(sampler) -> list[dict]:
        study = optuna.create_study(sampler=sampler, direction="maximize")
        return [study.ask(first.space).params for _ in range(2)]

    again = plan_study(config, [], open_store=False)
    assert drawn(first.sampler) == drawn(again.sampler), "one seed, one sequence"
    continued = drawn(continued_sampler(config, plan_study(config, [], open_store=False), 2))
    assert continued != drawn(plan_study(config, [], open_store=False).sampler)


def test_a_search_space_error_names_its_key():
    found = search_space({}, ["optim.lr=tag(log, interval(0, 1e-2))"])
    assert found.problems[0].startswith("optim.lr=tag(log, interval(0, 1e-2)): `low > 0`")


def test_a_search_over_experiment_presets_is_taken(tmp_path):
    """`experiment` is a group whose options set keys everywhere, not a key of the config:
    it was refused as "the config has no such key"."""
    from runner.sweeps.grid import group_options

    searched = "experiment=choice(digits_quick, imagefolder_finetune)"
    overrides = [
        f"paths.output_dir={tmp_path}",
        "hparams_search=optuna",
        "hydra.sweeper.params=null",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # for the options
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        found = plan_study(cfg, [searched], group_options=group_options(cfg))
        assert found.space["experiment"].choices == ("digits_quick", "imagefolder_finetune")
        with pytest.raises(SweepConfigError, match="reaches nope, which the experiment group"):
            plan_study(
                cfg, ["experiment=choice(digits_quick, nope)"], group_options=group_options(cfg)
            )


def test_seeds_and_folds_are_refused_in_a_search_that_draws_its_points(tmp_path):
    """seed=0,1 with TPE drew one seed a trial and steered towards the lucky one: no
    configuration was repeated, best_params named a seed, and the summary's "mean +- std
    over seeds" showed one run a row (+- nan)."""
    with pytest.raises(SweepConfigError) as refused:
        plan(tmp_path, arguments=("seed=0,1", "data.num_folds=3", "data.fold=range(3)"))
    text = str(refused.value)
    assert "seed: the search space choice(0, 1) makes the seed a searched value" in text
    assert "data.fold: the search space int interval(0, 2) makes the data.fold" in text
    assert "hydra/sweeper/sampler=grid, which runs every seed of each point" in text
    # The grid sampler runs every seed of each point: the summary's means are over them.
    grid = plan(
        tmp_path,
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.params=null",
        arguments=("optim.lr=0.001,0.01", "seed=0,1"),
        open_store=False,
    )
    assert set(grid.space) == {"optim.lr", "seed"}


def test_a_key_of_a_searched_model_group_is_not_checked_against_the_default_model(tmp_path):
    """model.depth (resnet32's) beside model=choice(resnet32, resnet10t) was refused at
    start with the default model's keys, though resnet32's points compose."""
    from runner.sweeps.grid import group_options

    overrides = [
        f"paths.output_dir={tmp_path}",
        "hparams_search=optuna",
        "hydra.sweeper.params=null",
    ]
    searched = ["model=choice(resnet32, resnet10t)", "model.depth=choice(20, 32)"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        found = plan_study(cfg, searched, group_options=group_options(cfg))
        assert set(found.space) == {"model", "model.depth"}
        # Without the group searched, a key the model lacks is still refused at start.
        with pytest.raises(SweepConfigError, match=r"model\.depth: the config has no such key"):
            plan_study(cfg, searched[1:], group_options=group_options(cfg))


def test_a_misspelt_key_of_a_searched_group_is_refused_at_start(tmp_path):
    """optim.lrr beside optim=choice(adamw, sgd) passed the start check: every trial
    failed on it, advising +optim.lrr, and the study kept the misspelt space."""
    from runner.sweeps.grid import group_options, job_composer

    overrides = [
        f"paths.output_dir={tmp_path}",
        "hparams_search=optuna",
        "hydra.sweeper.params=null",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        checks = {"group_options": group_options(cfg), "compose_job": job_composer(cfg, None)}
        misspelt = ["optim=choice(adamw, sgd)", "optim.lrr=interval(0.001, 0.01)"]
        with pytest.raises(SweepConfigError) as refused:
            plan_study(cfg, misspelt, open_store=False, **checks)
        assert "optim.lrr: the config has no such key; check its spelling: did you mean " in (
            str(refused.value)
        )
        assert "none of the options the search reaches has it (optim=adamw, sgd)" in str(
            refused.value
        )
        # A key one of the options has (sgd's momentum) is left to the trials.
        searched = ["optim=choice(adamw, sgd)", "optim.momentum=interval(0.8, 0.99)"]
        found = plan_study(cfg, searched, open_store=False, **checks)
        assert set(found.space) == {"optim", "optim.momentum"}


def test_a_trial_is_pruned_before_its_last_epoch_but_never_at_it(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 10.0}  # prunes any value
    study = optuna.create_study(study_name="s", storage=open_storage(storage))
    settings = {"study_name": "s", "storage": storage, "pruner": pruner}
    early, last = study.ask(), study.ask()
    assert report_and_check(settings, early.number, epoch=1, value=0.5, last_epoch=3)
    assert not report_and_check(settings, last.number, epoch=3, value=0.5, last_epoch=3)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[early.number] == optuna.trial.TrialState.PRUNED
    assert states[last.number] == optuna.trial.TrialState.RUNNING  # the sweeper tells it


def test_the_last_point_of_a_grid_is_told_and_the_grid_is_then_exhausted():
    """Optuna's GridSampler stops the study after its last point, which raises outside
    study.optimize; the sweeper's tell stores the result and goes on."""
    space = {"x": optuna.distributions.CategoricalDistribution([1, 2])}

    def grid_study() -> optuna.Study:
        return optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2]}, seed=0))

    plain = grid_study()
    first, last = plain.ask(space), plain.ask(space)
    plain.tell(first, 1.0)
    with pytest.raises(RuntimeError, match="stop"):  # Optuna's own behaviour
        plain.tell(last, 2.0)

    study = grid_study()
    first, last = study.ask(space), study.ask(space)
    tell_trial(study, first, state=optuna.trial.TrialState.FAIL)
    tell_trial(study, last, values=2.0)
    assert study.sampler.is_exhausted(study)
    assert [(t.state.name, t.value) for t in study.trials] == [("FAIL", None), ("COMPLETE", 2.0)]

    other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with pytest.raises(ValueError):  # any other error of tell still reaches the caller
        tell_trial(other, other.ask(space), values=1.0, state=optuna.trial.TrialState.FAIL)


def test_a_locked_storage_costs_the_report_not_the_job(tmp_path, monkeypatch, caplog):
    import sqlite3

    from runner.sweeps import optuna_parts

    monkeypatch.setattr(optuna_parts, "SQLITE_BUSY_TIMEOUT_S", 0.2)  # wait briefly, not 60 s
    storage = f"sqlite:///{tmp_path}/optuna.db"
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 10.0}  # prunes any value
    study = optuna.create_study(study_name="locked", storage=open_storage(storage))
    settings = {"study_name": "locked", "storage": storage, "pruner": pruner}
    trial = study.ask()
    other = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another job holds the lock past the wait
    try:
        assert not report_and_check(settings, trial.number, epoch=1, value=0.5, last_epoch=3)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert f"trial {trial.number} could not report epoch 1" in caplog.text
    assert "database is locked" in caplog.text
    # Once the lock is gone the next epoch reports (and here is pruned) as usual.
    assert report_and_check(settings, trial.number, epoch=2, value=0.5, last_epoch=3)
    assert study.trials[trial.number].state == optuna.trial.TrialState.PRUNED


def test_slurm_with_sqlite_stores_warns_and_names_the_alternatives(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        slurm = compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path}",
                "hparams_search=optuna",
                "hydra/launcher=slurm",
            ],
            return_hydra_config=True,
        )
        local = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    warning = cluster_store_warning(slurm)
    assert f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db" in warning
    assert f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db" in warning
    assert "logger.tracking_uri=http://<server host>:5000" in warning and "mlflow server" in warning
    assert "journal:///" in warning
    assert cluster_store_warning(local) is None
    slurm.logger.tracking_uri = "http://head:5000"
    slurm.hydra.sweeper.storage = f"journal:///{tmp_path}/optuna.log"
    assert cluster_store_warning(slurm) is None


def test_a_journal_url_reads_its_path_as_a_sqlite_url_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # three slashes: relative to the working directory
    optuna.create_study(study_name="rel", storage=open_storage("journal:///rel/study.log"))
    assert (tmp_path / "rel" / "study.log").stat().st_size > 0
    absolute = tmp_path / "shared" / "study.log"  # four slashes: an absolute path
    optuna.create_study(study_name="abs", storage=open_storage(f"journal:///{absolute}"))
    assert f"journal:///{absolute}".startswith("journal:////")
    assert absolute.stat().st_size > 0
    assert not (tmp_path / str(absolute).lstrip("/")).exists()


def test_a_trials_choices_reach_its_job_as_the_values_drawn(tmp_path):
    # Optuna hands back Python values; written as they print, None became the string
    # "None" and a string with a space, comma or quote did not parse.
    drawn = {
        "optim.weight_decay": None,
        "+note": "a b,c",
        "+quote": "it's \\'",
        "+text": "1e-3",
        "model": "resnet18",
        "optim.lr": 0.001,
        "trainer.batch_size": 32,
        "trainer.deterministic": True,
    }
    study = plan(tmp_path)
    study.spelled = {key.lstrip("+"): key for key in drawn if key.startswith("+")}
    trial = SimpleNamespace(params={k.lstrip("+"): v for k, v in drawn.items()}, number=4)
    lines = study.job_overrides(trial)
    assert "model=resnet18" in lines and "optim.lr=0.001" in lines  # plain ones unchanged
    parsed = OverridesParser.create().parse_overrides(lines)
    got = {o.get_key_element(): o.value() for o in parsed}
    assert {k: got[k] for k in drawn} == drawn
    assert type(got["+text"]) is str and got["optuna.trial"] == 4


def test_what_the_sweeper_tells_a_trial_from_its_job():
    state = optuna.trial.TrialState
    assert trial_result(0.75, {"status": "FINISHED", "value": 0.75}) == {"values": 0.75}
    assert trial_result(0.75, None) == {"values": 0.75}
    for failed in (None, float("nan"), float("inf"), "x"):
        assert trial_result(failed, {"status": "FAILED"}) == {"state": state.FAIL}
    # A value recorded by a pruned job (its own trial, or a trial with the same overrides
    # whose job it shares) is an unfinished training's value: never a COMPLETE trial.
    pruned = {"status": "FINISHED", "value": 0.31, "pruned": True}
    assert trial_result(0.31, pruned) == {"state": state.PRUNED}


def test_constants_escaped_by_hydra_are_not_taken_for_swept_values(tmp_path):
    typed = [f"logger.tracking_uri=sqlite:///{tmp_path}/m.db", "optim.lr=1e-3,3e-3"]
    # What Hydra hands the job: the constant escaped, the sweep as one value.
    job_overrides = [f"logger.tracking_uri=sqlite\\:///{tmp_path}/m.db", "optim.lr=0.001"]
    job = SweepJob(tmp_path, 3, job_overrides, job_key(job_overrides), {"arguments": typed})
    assert job.swept_overrides == ["optim.lr=0.001"]
    assert job.run_name == "job3 optim.lr=0.001"
    assert job.tracking_tags()["override.logger.tracking_uri"] == f"sqlite:///{tmp_path}/m.db"
    assert unescape(r"a\,b\:c\=d") == "a,b:c=d"


def test_the_summary_logs_no_password_of_a_tracking_or_storage_url(tmp_path):
    """A one-job sweep's best.logger.tracking_uri tag, summary.csv and the uploaded
    study.json held the password in the clear."""
    uri = "logger.tracking_uri=http://bob:s3cret@127.0.0.1:5000"
    finished_job(tmp_path, 0, ["optim.lr=0.1", uri], 0.8)
    study = tmp_path / "optuna" / "study.json"
    study.parent.mkdir()
    study.write_text(json.dumps({"storage": "postgresql://ann:s3cret@db.lan/optuna"}))
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_tags["best.logger.tracking_uri"] == "http://bob:***@127.0.0.1:5000"
    assert "s3cret" not in summary.markdown + json.dumps(summary.best_tags)
    (logged,) = [path for path in summary.files if path.name == "study.json"]
    for path in summary.files:
        if path.suffix != ".png":
            assert "s3cret" not in path.read_text(), path
    assert json.loads(logged.read_text())["storage"] == "postgresql://ann:***@db.lan/optuna"
    assert "s3cret" in study.read_text()  # the jobs reach their trial through it


def test_a_one_job_sweeps_best_tags_leave_the_command_lines_constants_out(tmp_path):
    """A continued study's one new trial tagged best.paths.output_dir, best.debug and
    best.hparams_search beside the value it drew."""
    typed = ["paths.output_dir=/o", "debug=fast", "hparams_search=optuna"]
    (tmp_path / "sweep.json").write_text(json.dumps({"arguments": typed}))
    finished_job(tmp_path, 0, [*typed, "optim.lr=0.0012", "optuna.trial=2"], 0.8)
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert {k: v for k, v in summary.best_tags.items() if k != "best.run_id"} == {
        "best.optim.lr": "0.0012",
        "best.job": "0",
    }


def test_a_searched_key_every_trial_drew_alike_is_still_a_best_tag(tmp_path):
    """cmaes drew loss.label_smoothing=0.1 in every trial: it was left out of the columns
    and the best.* tags, so a reader applying the tags trained with the default 0.0."""
    typed = ["trainer.max_epochs=2", "hparams_search=optuna"]
    (tmp_path / "sweep.json").write_text(json.dumps({"arguments": typed}))
    for num, (lr, value) in enumerate([("0.01", 0.8), ("0.003", 0.9)]):
        drawn = [f"optim.lr={lr}", "loss.label_smoothing=0.1", f"optuna.trial={num}"]
        finished_job(tmp_path, num, [*typed, *drawn], value)
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_tags == {
        "best.loss.label_smoothing": "0.1",
        "best.optim.lr": "0.003",
        "best.run_id": "id1",
        "best.job": "1",
    }
    assert "| job | loss.label_smoothing | optim.lr | status |" in summary.markdown


def test_a_best_of_one_run_is_one_job_of_one_run(tmp_path):
    """Seeds swept, but one run a configuration finished: "Best: jobs 1 (..., 1 runs)"."""
    (tmp_path / "sweep.json").write_text(json.dumps({"arguments": ["seed=0,1"]}))
    finished_job(tmp_path, 0, ["optim.lr=0.1", "seed=0"], 0.8)
    finished_job(tmp_path, 1, ["optim.lr=0.01", "seed=1"], 0.9)
    markdown = summarize(tmp_path, monitor="val/acc", maximize=True).markdown
    assert "Best: job 1 (optim.lr=0.01, 1 run): val/acc = 0.9000" in markdown


def test_a_continued_studys_summary_names_the_studys_best_of_an_earlier_sweep(tmp_path):
    """Its best tags and "Best:" line named this sweep's trial as if it were the study's
    best, while best_params.json in the same parent run named another."""
    finished_job(tmp_path, 0, ["optim.lr=0.0012", "optuna.trial=2"], 0.13)
    (tmp_path / "optuna").mkdir()
    best = {"best_trial": 0, "best_value": 0.162, "best_params": {"optim.lr": 0.0023}}
    (tmp_path / "optuna" / "best_params.json").write_text(json.dumps(best))
    markdown = summarize(tmp_path, monitor="val/acc", maximize=True).markdown
    assert "The study's best is trial 0, of an earlier sweep: val/acc = 0.1620 with " in markdown
    best["best_trial"] = 2  # this sweep's own trial: nothing to add
    (tmp_path / "optuna" / "best_params.json").write_text(json.dumps(best))
    assert "The study's best" not in summarize(tmp_path, monitor="val/acc", maximize=True).markdown


def test_summary_ranks_jobs_and_skips_pruned_for_best(tmp_path):
    for num, (lr, value) in enumerate([("0.1", 0.8), ("0.01", 0.9)]):
        finished_job(tmp_path, num, [f"optim.lr={lr}", "trainer.max_epochs=2"], value)
    finished_job(tmp_path, 2, ["optim.lr=1.0", "trainer.max_epochs=2"], 0.95, pruned=True)
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_value == 0.9  # the pruned job's 0.95 does not count
    assert summary.best_tags == {"best.optim.lr": "0.01", "best.run_id": "id1", "best.job": "1"}
    assert summary.best_metrics == {"best/val/acc": 0.9}
    assert "FINISHED (pruned)" in summary.markdown
    assert "trainer.max_epochs" not in summary.markdown  # the same in every job
    assert (tmp_path / "sweep_plot.png").stat().st_size > 1000


def test_the_summary_says_which_finished_jobs_run_dir_is_gone(tmp_path):
    """A job whose run dir was deleted was listed FINISHED with blank test metrics."""
    for num, lr in enumerate(["0.1", "0.01"]):
        finished_job(tmp_path, num, [f"optim.lr={lr}"], 0.8 + num / 10)
    shutil.rmtree(tmp_path / "1")
    markdown = summarize(tmp_path, monitor="val/acc", maximize=True).markdown
    assert "| 1 | 0.01 | FINISHED (no metrics) | 0.9000 |" in markdown
    assert "| 0 | 0.1 | FINISHED | 0.8000 |" in markdown
    assert f"Job 1 finished, but its {tmp_path / '1' / 'metrics.json'} is gone" in markdown


def test_with_seeds_the_best_is_the_best_mean_over_seeds_not_the_luckiest_seed(tmp_path):
    # lr=0.1 has the single best seed (0.95); lr=0.01 the best mean (0.8 vs 0.725).
    values = {("0.1", "0"): 0.95, ("0.1", "1"): 0.5, ("0.01", "0"): 0.9, ("0.01", "1"): 0.7}
    for num, ((lr, seed), value) in enumerate(values.items()):
        finished_job(
            tmp_path, num, [f"optim.lr={lr}", f"seed={seed}", "trainer.max_epochs=2"], value
        )
    finished_job(tmp_path, 4, ["optim.lr=1.0", "seed=0", "trainer.max_epochs=2"], 0.99, pruned=True)
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_value == pytest.approx(0.8)
    assert summary.best_tags == {
        "best.optim.lr": "0.01",
        "best.seeds": "0,1",
        "best.run_ids": "id2,id3",
        "best.run_id": "id2",
        "best.job": "2",
    }
    metrics = summary.best_metrics
    assert metrics["best/val/acc"] == pytest.approx(0.8)
    assert metrics["best/val/acc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert metrics["best/test/acc"] == pytest.approx(0.75)
    assert metrics["best/test/acc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert "| 0.1 | 2 | 0.7250 +- 0.3182 | 0.6750 +- 0.3182 |" in summary.markdown
    assert "| 0.01 | 2 | 0.8000 +- 0.1414 | 0.7500 +- 0.1414 |" in summary.markdown
    assert "Best: jobs 2, 3 (optim.lr=0.01, 2 runs): val/acc = 0.8000 +- 0.1414" in (
        summary.markdown
    )
    assert "| 1.0 |" not in summary.markdown.split("## Mean")[1]  # pruned: in no mean


def test_a_configuration_whose_other_seeds_failed_does_not_win_on_its_one_run(tmp_path):
    """lr=1e-2 finished 1 of 3 seeds (the others diverged): it won with a std of 0."""
    values = {("1e-3", s): v for s, v in zip("012", (0.90, 0.88, 0.89), strict=True)}
    values[("1e-2", "0")] = 0.93
    for num, ((lr, seed), value) in enumerate(values.items()):
        finished_job(tmp_path, num, [f"optim.lr={lr}", f"seed={seed}"], value)
    for num, seed in ((4, "1"), (5, "2")):
        update_manifest(
            tmp_path,
            job_key(["optim.lr=1e-2", f"seed={seed}"]),
            status="FAILED",
            num=num,
            overrides=["optim.lr=1e-2", f"seed={seed}"],
            run_dir=str(tmp_path / str(num)),
        )
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_tags["best.optim.lr"] == "1e-3"
    assert summary.best_value == pytest.approx(0.89)
    assert "those with fewer (a failed or pruned repeat) are listed, not ranked" in (
        summary.markdown
    )
    assert "| 1e-2 | 1 | 0.9300 +- nan |" in summary.markdown  # one run: no spread


def test_the_jobs_a_resumed_sweep_added_are_grouped_with_the_others(tmp_path):
    """Their sweep.resume=... override made seed 2 a configuration of its own."""
    finished_job(tmp_path, 0, ["seed=0"], 0.8)
    finished_job(tmp_path, 1, ["seed=1"], 0.9)
    finished_job(tmp_path, 2, ["seed=2", f"sweep.resume={tmp_path}"], 0.7)
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_value == pytest.approx(0.8)
    assert summary.best_tags["best.seeds"] == "0,1,2"
    assert "sweep.resume" not in summary.markdown


def test_a_storage_password_is_never_shown(tmp_path):
    assert shown_storage("postgresql://ann:s3cr:et@db.lan:5432/optuna") == (
        "postgresql://ann:***@db.lan:5432/optuna"
    )
    for url in ("sqlite:///outputs/optuna.db", "journal:////shared/study.log", "mysql://db/x"):
        assert shown_storage(url) == url
    with pytest.raises(SweepConfigError) as refused:
        plan(tmp_path, "hydra.sweeper.storage=postgres://ann:s3cret@db.lan/optuna")
    assert "postgres://ann:***@db.lan/optuna" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    assert shown_storage("postgresql://db.lan/optuna?user=ann&password=s3cret&x=1") == (
        "postgresql://db.lan/optuna?user=ann&password=***&x=1"
    )


@pytest.mark.parametrize(
    "storage", ["postgresql+psycopg2://ann:pw@127.0.0.1:5432/optuna", "mysql://db.lan/optuna"]
)
def test_a_database_servers_storage_url_is_taken_and_its_driver_checked(tmp_path, storage):
    """Each was refused as naming no file, though Optuna opens it; then, with no driver
    installed (none is here), it failed with a traceback when the sweep started."""
    with pytest.raises(SweepConfigError) as err:
        plan(tmp_path, f"hydra.sweeper.storage={storage}", open_store=False)
    assert "names no file" not in str(err.value)
    assert "needs a database whose driver is installed; No module named" in str(err.value)
    assert f"{storage.partition('+')[0].partition(':')[0]}+<driver>://" in str(err.value)


def test_the_summary_command_ranks_by_the_sweeps_own_monitor(tmp_path, capsys):
    from runner.sweeps.__main__ import main

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for num, (lr, loss) in enumerate([("0.1", 0.9), ("0.01", 0.2), ("1.0", 1.7)]):
        finished_job(sweep, num, [f"optim.lr={lr}"], loss)
    # What Hydra saves: monitor_mode as the runner's interpolation of trainer.monitor.
    (sweep / "multirun.yaml").write_text(
        "trainer:\n  monitor: val/loss\n  monitor_mode: ${runner_monitor_mode:${.monitor}}\n"
    )
    assert main(["summary", str(sweep)]) == 0
    written = (sweep / "summary.md").read_text()
    assert "monitored: val/loss (min)" in written
    assert "Best: job 1 (optim.lr=0.01): val/loss = 0.2000" in written
    assert "Best: job 1" in capsys.readouterr().out
    assert main(["summary", str(sweep), "val/loss", "min"]) == 0
    # The jobs recorded val/loss only: another metric, or the other way, would relabel
    # the column and rank by val/loss (the worst job called the best val/acc).
    capsys.readouterr()
    assert main(["summary", str(sweep), "val/acc"]) == 1
    assert "recorded their best val/loss" in capsys.readouterr().out
    assert main(["summary", str(sweep), "val/loss", "max"]) == 1
    assert "Best: job 1 (optim.lr=0.01)" in (sweep / "summary.md").read_text()
    # A dir that is not a sweep gets an error and no files.
    assert main(["summary", str(tmp_path / "elsewhere")]) == 1
    assert main(["collect", str(tmp_path / "elsewhere")]) == 1  # not a traceback
    assert main(["collect", str(tmp_path)]) == 1  # one level too high: not a sweep dir
    assert not (tmp_path / "elsewhere").exists()


def test_a_range_that_reaches_a_value_the_config_refuses_is_refused_before_any_trial():
    """choice(0.001, -1) once failed in the trials that drew -1, one by one."""
    found = search_space(
        {"loss.label_smoothing": "interval(0.0, 0.2)"},
        ["optim.lr=choice(0.001,-1)", "optim.weight_decay=interval(-1,0.1)"],
    )
    assert found.problems == [
        "optim.lr: the search space choice(0.001, -1) reaches -1, which is invalid: "
        "expected a number > 0",
        "optim.weight_decay: the search space interval(-1, 0.1) reaches -1.0, which is "
        "invalid: expected a number >= 0",
    ]
    assert search_space({"optim.lr": "tag(log, interval(1e-4, 3e-2))"}, []).problems == []


@pytest.mark.parametrize("storage", ["sqlite:///", "journal:///"])
def test_a_storage_url_that_names_no_file_is_refused(tmp_path, storage):
    """sqlite:/// kept each connection's study in memory (pruning lost, nothing stored);
    journal:/// failed with IsADirectoryError."""
    with pytest.raises(SweepConfigError, match="names no file"):
        plan(tmp_path, f"hydra.sweeper.storage={storage}")


def test_a_sampler_option_that_follows_another_key_names_that_key():
    """`seed=-1` failed as "Seed must be between 0 and 2**32 - 1. Fix its options
    (hydra.sweeper.sampler.<option>=...)": the option was the run's seed."""
    cfg = OmegaConf.create({"seed": -1, "sampler": {"_target_": "optuna.samplers.TPESampler"}})
    cfg.sampler.seed = "${seed}"
    with pytest.raises(SweepConfigError, match=r"of its options, seed=-1 follows \$\{seed\}"):
        build_sampler(cfg.sampler, {})


def test_a_storage_that_cannot_be_opened_is_refused_before_the_sweep(tmp_path):
    """A folder that cannot be made, a text file as the database, a database without its
    driver: Optuna's traceback when the sweep started."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notes.db").write_text("not a database\n")
    expected = {
        f"sqlite:///{tmp_path}/afile/optuna.db": "its folder cannot be made and written",
        f"journal:///{tmp_path}/afile/study.log": "is a file, not a folder",
        "sqlite:////proc/nope/optuna.db": "cannot write in /proc",
        f"sqlite:///{tmp_path}/notes.db": "notes.db is another kind of file",
        "postgresql+nodriver://u:hunter2@127.0.0.1:9/db": "a database URL SQLAlchemy can read",
    }
    for storage, message in expected.items():
        with pytest.raises(SweepConfigError) as err:
            plan(tmp_path, f"hydra.sweeper.storage={storage}")
        assert message in str(err.value) and "hunter2" not in str(err.value), storage


def test_a_study_continued_with_other_settings_names_each_value_that_applies_now():
    """A key given twice was compared as two texts: no change showed as "dropped: none"."""
    from types import SimpleNamespace

    from runner.sweeps.stored_study import settings_change_warning, trial_settings

    first = trial_settings(["trainer.max_epochs=1", "trainer.max_epochs=30", "paths.output_dir=a"])
    assert first == {"trainer.max_epochs": "30"}
    plan = SimpleNamespace(
        study_name="s", fixed=["trainer.max_epochs=30", "trainer.max_epochs=1", "+loss.q=0.7"]
    )
    warning = settings_change_warning(first, plan)
    assert "trainer.max_epochs: 30 -> 1" in warning and "loss.q: (not set) -> 0.7" in warning
    plan.fixed = ["trainer.max_epochs=30", "paths.output_dir=b", "hydra.sweeper.n_trials=9"]
    assert settings_change_warning(first, plan) is None  # outputs and the sweeper's own
