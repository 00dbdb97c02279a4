"""One job of a sweep, seen from inside its process: records, skips, contains failures.

Each job wraps its training in `SweepJob.run`, which records it in the manifest, skips it
when a resumed sweep already finished it, and turns a failure into a FAILED entry instead
of an exception, so one failing job never stops the others.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config.redaction import redacted_overrides
from runner.sweeps.manifest import (
    STOP_FILE,
    SWEEP_CONTROL_PREFIXES,
    job_key,
    job_lock,
    job_run_dir,
    parse_overrides,
    read_manifest,
    read_sweep_info,
    update_manifest,
)
from runner.sweeps.out_of_fold import OOF_FILE, UnreadableOutOfFold, read_out_of_fold

log = logging.getLogger(__name__)


@dataclass
class SweepJob:
    """One job of a sweep, as seen from inside the job's process.

    Attributes:
        sweep_dir: The sweep's directory (Hydra's `hydra.sweep.dir`).
        num: Hydra's job number.
        overrides: The job's task overrides.
        key: The job's identity in the manifest.
        info: The parent run's record from sweep.json.
        fail_fast: Whether a failure stops the jobs that have not started yet.
        pruned: Set when the Optuna pruner stopped the job early.
    """

    sweep_dir: Path
    num: int
    overrides: list[str]
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    fail_fast: bool = False
    pruned: bool = False

    @classmethod
    def current(cls, cfg: DictConfig) -> SweepJob | None:
        """The job Hydra is running now, or None outside a multirun."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
        overrides = list(hydra_cfg.overrides.task)
        return cls(
            sweep_dir=sweep_dir,
            num=int(hydra_cfg.job.num),
            overrides=overrides,
            key=job_key(overrides),
            info=read_sweep_info(sweep_dir),
            fail_fast=bool(OmegaConf.select(cfg, "sweep.fail_fast", default=False)),
        )

    @property
    def shown_key(self) -> str:
        """The job's key as logs show it (run.log is uploaded): passwords as '***'."""
        return job_key(redacted_overrides(self.overrides))

    @property
    def experiment_name(self) -> str | None:
        """The parent's experiment: children must share it to nest under it in the UI."""
        return self.info.get("experiment_name")

    @property
    def swept_overrides(self) -> list[str]:
        r"""The job's overrides that the sweep varies (not constants of the command line).

        Compared by key: Hydra hands each job the command line's constants again, with
        special characters escaped (`logger.tracking_uri=sqlite\:///...`), so the text
        differs from what was typed while the key and value are the same.
        """
        constant = constant_keys(self.info.get("arguments", []))
        return [
            o
            for o in self.overrides
            if not o.startswith(SWEEP_CONTROL_PREFIXES) and override_key(o) not in constant
        ]

    @property
    def run_name(self) -> str:
        """The MLflow run name: the job number and what it varies."""
        return " ".join([f"job{self.num}", *redacted_overrides(self.swept_overrides)])[:250]

    def tracking_tags(self) -> dict[str, str]:
        """Tags that make the job's MLflow run a child of the sweep's parent run."""
        tags = {"sweep_dir": str(self.sweep_dir), "sweep.job": str(self.num)}
        if self.info.get("parent_run_id"):
            tags["mlflow.parentRunId"] = self.info["parent_run_id"]
        shown = parse_overrides(redacted_overrides(self.overrides))
        tags.update({f"override.{n}": unescape(v) for n, v in shown.items()})
        return tags

    def settled(self, cfg: DictConfig) -> bool:
        """Whether this job is not to be trained now (finished, or stopped by fail_fast).

        A resumed sweep finished it earlier, or `sweep.fail_fast` stopped the sweep. Reads
        only: under DDP every rank asks it before the ranks meet, so that the ranks
        of a finished job end with rank 0 instead of waiting for it to join them. Rank 0
        alone records the job (`run`).
        """
        recorded = read_manifest(self.sweep_dir).get(self.key, {})
        return self._done(cfg, recorded) or (self.sweep_dir / STOP_FILE).exists()

    def _done(self, cfg: DictConfig, recorded: dict[str, Any], say: bool = True) -> bool:
        """Whether the job finished earlier and left what it was run for.

        A k-fold job is run for its out_of_fold.npz: when that is missing, damaged or
        another fold's (a copied sweep dir), the job runs again, resuming its finished
        run, which tests its best weights again and writes the file anew.
        """
        if recorded.get("status") != "FINISHED":
            return False
        if OmegaConf.select(cfg, "data.fold", default=None) is None or not recorded.get("run_dir"):
            return True
        outputs = job_run_dir(self.sweep_dir, recorded) / OOF_FILE
        try:
            held_out = int(read_out_of_fold(outputs, numbers_only=True)["fold"])
        except UnreadableOutOfFold as err:
            problem = str(err)
        else:
            fold = int(cfg.data.fold)
            if held_out == fold:
                return True
            problem = f"{outputs} holds the outputs of fold {held_out}, not of its fold {fold}"
        if say:
            log.warning("sweep job %s runs again: %s", self.shown_key, problem)
        return False

    def run(self, cfg: DictConfig, train: Callable[[DictConfig, SweepJob], float]) -> float:
        """Runs `train` as this job: skips, records and contains failures.

        Returns:
            The job's objective; NaN when it failed or was skipped, so the sweep goes on.
        """
        jobs = read_manifest(self.sweep_dir)
        recorded = jobs.get(self.key, {})
        if self._done(cfg, recorded):
            return self._kept(recorded)
        stop = self.sweep_dir / STOP_FILE
        if stop.exists():
            log.warning(
                "sweep.fail_fast: not starting %s (%s)",
                self.shown_key,
                stop.read_text(encoding="utf-8"),
            )
            update_manifest(
                self.sweep_dir, self.key, status="SKIPPED", overrides=self.overrides, num=self.num
            )
            return math.nan
        # In a copied or moved sweep dir, the recorded run dir's place in it (job_run_dir).
        run_dir = (
            str(job_run_dir(self.sweep_dir, recorded))
            if recorded.get("run_dir")
            else own_run_dir(str(cfg.paths.run_dir), self.key, jobs)
        )
        if run_dir != str(cfg.paths.run_dir):
            # A resumed sweep whose jobs are listed in another order (or a changed grid):
            # continue where this job's checkpoints are, never in another job's dir.
            with open_dict(cfg):
                cfg.paths.run_dir = run_dir
        with job_lock(Path(run_dir), self.shown_key):
            # Read again: a process that held the lock may have finished the job since.
            recorded = read_manifest(self.sweep_dir).get(self.key, {})
            if self._done(cfg, recorded, say=False):
                return self._kept(recorded)
            return self._train_and_record(cfg, train, recorded)

    def _kept(self, recorded: dict[str, Any]) -> float:
        """The value of a job that finished earlier, which is not run again."""
        run_dir = job_run_dir(self.sweep_dir, recorded)  # where it lies in a copied sweep dir
        log.info("sweep job %s finished earlier (%s): kept", self.shown_key, run_dir)
        return float(recorded.get("value", math.nan))

    def run_on_another_rank(
        self, cfg: DictConfig, train: Callable[[DictConfig, SweepJob | None], float]
    ) -> float:
        """Runs `train` on a rank other than 0 of the job's processes, which records nothing.

        It skips the job where rank 0 does (`settled`), and a failure returns NaN as on rank
        0, which records it: every process of the job ends alike (a rank that raised left
        its SLURM task without a result, and the launcher waited for it for ever).
        """
        if self.settled(cfg):
            return math.nan
        try:
            return train(cfg, None)
        except Exception as err:
            log.error("sweep job %s failed: %s: %s", self.shown_key, type(err).__name__, err)
            return math.nan

    def _train_and_record(
        self,
        cfg: DictConfig,
        train: Callable[[DictConfig, SweepJob], float],
        recorded: dict[str, Any],
    ) -> float:
        """Runs `train`, recording the job as RUNNING, then FINISHED, FAILED or INTERRUPTED."""
        update_manifest(
            self.sweep_dir,
            self.key,
            status="RUNNING",
            overrides=self.overrides,
            num=self.num,
            run_dir=str(cfg.paths.run_dir),
            sweep_dir=str(self.sweep_dir),  # where run_dir lies in a moved copy (job_run_dir)
            attempts=recorded.get("attempts", 0) + 1,
        )
        started = time.time()
        try:
            value = train(cfg, self)
        except Exception as err:
            update_manifest(
                self.sweep_dir,
                self.key,
                status="FAILED",
                error=f"{type(err).__name__}: {err}",
                started=started,
                seconds=time.time() - started,
                traceback=traceback.format_exc(),
            )
            log.error(
                "sweep job %s failed: %s: %s (%s)",
                self.shown_key,
                type(err).__name__,
                err,
                "sweep.fail_fast: the jobs not started yet will not start"
                if self.fail_fast
                else "the sweep goes on",
            )
            if self.fail_fast:
                (self.sweep_dir / STOP_FILE).write_text(
                    f"job {self.num} ({self.shown_key}) failed", encoding="utf-8"
                )
            return math.nan
        except BaseException:  # a signal or Ctrl-C: the job resumes when the sweep does
            update_manifest(self.sweep_dir, self.key, status="INTERRUPTED")
            raise
        update_manifest(
            self.sweep_dir,
            self.key,
            status="FINISHED",
            value=value,
            pruned=self.pruned,
            started=started,
            seconds=time.time() - started,
        )
        return value

    def record_run(self, mlflow_run_id: str | None) -> None:
        """Notes the job's MLflow run id in the manifest."""
        update_manifest(self.sweep_dir, self.key, mlflow_run_id=mlflow_run_id)

    @functools.cached_property
    def study_settings(self) -> dict[str, Any] | None:
        """The Optuna sweeper's study.json (written before any trial starts), read once."""
        from runner.sweeps.stored_study import read_study_file

        return read_study_file(self.sweep_dir)

    def should_prune(self, cfg: DictConfig, epoch: int, value: float) -> bool:
        """Reports the monitored value to the job's Optuna trial; True = stop early."""
        trial_number = OmegaConf.select(cfg, "optuna.trial", default=None)
        if trial_number is None:
            return False
        from runner.sweeps.optuna_trial import report_and_check

        settings = self.study_settings
        if settings is None:  # not launched by the Optuna sweeper: nothing to report to
            return False
        last_epoch = int(cfg.trainer.max_epochs)
        self.pruned = report_and_check(settings, int(trial_number), epoch, value, last_epoch)
        return self.pruned


def own_run_dir(run_dir: str, key: str, jobs: dict[str, dict[str, Any]]) -> str:
    """`run_dir`, unless another job of the manifest has it: then a free dir beside it.

    A resumed sweep with a changed grid numbers its jobs anew, so job N's dir may hold the
    checkpoints of a job with other overrides; a job resumes only a run of its own.
    """
    taken = {entry.get("run_dir") for other, entry in jobs.items() if other != key}
    candidate, suffix = run_dir, 1
    while candidate in taken:
        candidate, suffix = f"{run_dir}-{suffix}", suffix + 1
    return candidate


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`; `group@pkg=x` -> `group@pkg`."""
    return override.lstrip("+~").partition("=")[0]


def unescape(value: str) -> str:
    r"""A value as typed: Hydra escapes `\ ( ) [ ] { } : = , ` and blanks with a backslash."""
    return re.sub(r"\\(.)", r"\1", value)


def constant_keys(arguments: list[str]) -> set[str]:
    """The keys the command line sets to one value (not swept), from its overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except Exception:  # not Hydra's grammar (a hand-written sweep.json): compare by key
        return {override_key(a) for a in arguments if "," not in a.partition("=")[2]}
    return {override_key(o.input_line) for o in overrides if not o.is_sweep_override()}
