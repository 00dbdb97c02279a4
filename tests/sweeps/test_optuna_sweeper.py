"""The Optuna sweeper's pieces without training: search-space grammar, samplers, storages,
pruners, and the summary of a sweep dir."""

from __future__ import annotations

import json

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.runner_optuna_sweeper.runner_optuna_sweeper import (
    build_sampler,
    distribution_of,
)
from runner.sweeps.manifest import job_key, update_manifest
from runner.sweeps.optuna_trial import build_pruner, open_storage
from runner.sweeps.summary import summarize


def space(line: str):
    return distribution_of(OverridesParser.create().parse_override(line))


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


def test_a_single_value_is_not_a_search_space():
    with pytest.raises(ValueError, match=r"hydra.sweeper.params.optim.lr='0.1'.*interval"):
        space("optim.lr=0.1")


def test_every_sampler_builds_and_grid_needs_finite_values():
    finite = {"seed": space("seed=0,1"), "epochs": space("trainer.max_epochs=range(1, 3)")}
    samplers = optuna.samplers
    kinds = {
        "tpe": samplers.TPESampler,
        "random": samplers.RandomSampler,
        "cmaes": samplers.CmaEsSampler,
        "grid": samplers.GridSampler,
    }
    for name, kind in kinds.items():
        assert isinstance(build_sampler(name, 0, finite), kind)
    with pytest.raises(ValueError, match="sampler=grid needs finite values, but lr"):
        build_sampler("grid", 0, {"lr": space("optim.lr=interval(0.1, 1.0)")})
    with pytest.raises(ValueError, match="sampler='bayes' is unknown: use one of tpe"):
        build_sampler("bayes", 0, finite)


def test_storages_and_pruners(tmp_path):
    journal = open_storage(f"journal:///{tmp_path}/shared/study.log")
    optuna.create_study(study_name="s", storage=journal)
    assert (tmp_path / "shared" / "study.log").exists()
    database = open_storage(f"sqlite:///{tmp_path}/sub/optuna.db")
    optuna.create_study(study_name="s", storage=database)
    assert (tmp_path / "sub" / "optuna.db").exists()
    assert isinstance(build_pruner("median", 3, 1, 10), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("hyperband", 3, 1, 10), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner("none", 3, 1, 10), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match=r"optuna\.pruner='asha' is not a pruner"):
        build_pruner("asha", 3, 1, 10)


def test_summary_ranks_jobs_aggregates_seeds_and_skips_pruned_for_best(tmp_path):
    values = {("0.1", "0"): 0.8, ("0.1", "1"): 0.6, ("0.01", "0"): 0.9, ("0.01", "1"): 0.7}
    for num, ((lr, seed), value) in enumerate(values.items()):
        run_dir = tmp_path / str(num)
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"test/acc": value - 0.05}))
        overrides = [f"optim.lr={lr}", f"seed={seed}", "trainer.max_epochs=2"]
        update_manifest(
            tmp_path,
            job_key(overrides),
            status="FINISHED",
            value=value,
            num=num,
            overrides=overrides,
            run_dir=str(run_dir),
            mlflow_run_id=f"id{num}",
        )
    overrides = ["optim.lr=1.0", "seed=0", "trainer.max_epochs=2"]
    update_manifest(
        tmp_path,
        job_key(overrides),
        status="FINISHED",
        value=0.95,
        pruned=True,
        num=4,
        overrides=overrides,
        run_dir=str(tmp_path / "4"),
    )
    summary = summarize(tmp_path, monitor="val/acc", maximize=True)
    assert summary.best_value == 0.9  # the pruned job's 0.95 does not count
    assert summary.best_tags == {
        "best.optim.lr": "0.01",
        "best.seed": "0",
        "best.run_id": "id2",
        "best.job": "2",
    }
    assert "| 0.1 | 2 | 0.7000 +- 0.1414 | 0.6500 +- 0.1414 |" in summary.markdown
    assert "| 0.01 | 2 | 0.8000 +- 0.1414 |" in summary.markdown
    assert "FINISHED (pruned)" in summary.markdown
    assert "trainer.max_epochs" not in summary.markdown  # the same in every job
    assert (tmp_path / "sweep_plot.png").stat().st_size > 1000
