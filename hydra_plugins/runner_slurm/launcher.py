"""The SLURM launchers: `slurm` waits for the sweep's jobs, `slurm_submit` returns at once.

Both submit the sweep as one job array as hydra-submitit-launcher's `SlurmLauncher`
does; sbatch refusing it (a partition or time limit the cluster has not, no controller)
ends the command with sbatch's own words and the keys to check, not a traceback.

For long sweeps it is often better to submit from a login node, log out, and collect the
results later: `hydra/launcher=slurm_submit` does that, with the same settings as
`hydra/launcher=slurm`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class WaitingSlurmLauncher(SlurmLauncher):
    """Submits the sweep as one SLURM job array and waits for every job's result."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Submits one job per override list; returns each job's result."""
        sweep_dir = self.sweep_dir()
        log.info("submitit slurm sweep output dir: %s", sweep_dir)
        jobs, numbers = self.submit_array(job_overrides, initial_job_idx)
        for job, num, overrides in zip(jobs, numbers, job_overrides, strict=True):
            log.info("\t#%d (job %s): %s", num, job.job_id, " ".join(filter_overrides(overrides)))
        return [job.results()[0] for job in jobs]

    def sweep_dir(self) -> Path:
        """The sweep dir, made (with `hydra.sweep.mode` when set), as an absolute path.

        Absolute: `collect` is often run from another folder than the launch was.
        """
        if self.config is None:
            raise RuntimeError("the launcher was not set up by Hydra")
        folder = Path(str(self.config.hydra.sweep.dir)).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(folder, mode=int(str(self.config.hydra.sweep.mode), 8))
        return folder

    def submit_array(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> tuple[list[Any], list[int]]:
        """Submits one SLURM job per override list, as one array.

        The executor gets the settings hydra-submitit-launcher's own `launch` gives it.

        Returns:
            The submitit jobs and their job numbers.

        Raises:
            SystemExit: sbatch refused the array; the message quotes it and names the keys.
        """
        import submitit
        from submitit.core.utils import FailedJobError

        settings = dict(self.params)
        folder = settings.pop("submitit_folder")
        init = {f"{self._EXECUTOR}_max_num_timeout": settings.pop("max_num_timeout")}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=folder, **init)
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in common else f"{self._EXECUTOR}_{k}": v for k, v in settings.items()}
        )
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        arguments = [
            (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
            for num, overrides in zip(numbers, job_overrides, strict=True)
        ]
        try:
            jobs = executor.map_array(self, *zip(*arguments, strict=True))
        except FailedJobError as err:  # submitit raises it with sbatch's stderr
            from runner.sweeps.callback import launch_failed

            said = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            launch_failed()  # the sweep's parent run ends FAILED, not KILLED
            raise SystemExit(
                f"Error: sbatch refused the sweep's jobs: {said}. Check the hydra.launcher "
                "keys (partition, timeout_min, mem_gb, gpus_per_node, additional_parameters) "
                "against the cluster's (sinfo), or start one (scripts/slurm_local.sh up)"
            ) from None
        return jobs, numbers


class SubmitOnlySlurmLauncher(WaitingSlurmLauncher):
    """Submits the sweep as one SLURM job array and returns at once.

    The job ids, overrides and run dirs go to `<sweep dir>/slurm_jobs.json` and to the
    console; `python -m runner.sweeps collect <sweep dir>` reports on them later. A job
    still checkpoints and is requeued on preemption or timeout, as with `slurm`.
    """

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Submits one job per override list; returns placeholders, not results."""
        from runner.sweeps.callback import launch_failed
        from runner.sweeps.manifest import (
            SUBMITTED_FILE,
            SweepFileError,
            submitted_records,
            write_json,
        )

        sweep_dir = self.sweep_dir()
        try:  # read before anything is submitted: jobs it could not record are lost to collect
            earlier = submitted_records(sweep_dir)
        except SweepFileError as err:
            launch_failed()
            raise SystemExit(f"Error: {err}") from None
        jobs, numbers = self.submit_array(job_overrides, initial_job_idx)
        records = [
            {
                "job_id": job.job_id,
                "num": num,
                "overrides": " ".join(filter_overrides(overrides)),
                "run_dir": str(sweep_dir / str(num)),
            }
            for job, num, overrides in zip(jobs, numbers, job_overrides, strict=True)
        ]
        write_json(sweep_dir / SUBMITTED_FILE, earlier + records)  # whole, or the old one
        for record in records:
            log.info(
                "submitted job %s: #%d %s", record["job_id"], record["num"], record["overrides"]
            )
        log.info(
            "sweep dir %s; results later: python -m runner.sweeps collect %s", sweep_dir, sweep_dir
        )
        # COMPLETED with no value: the sweep ends here; the jobs run on.
        return [
            JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            for overrides in job_overrides
        ]
