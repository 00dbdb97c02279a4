"""A SLURM launcher that submits a sweep and returns without waiting for its jobs.

hydra-submitit-launcher's `SlurmLauncher` waits for every job's result. For long sweeps
it is often better to submit from a login node, log out, and collect the results later:
`hydra/launcher=slurm_submit` does that, with the same settings as `hydra/launcher=slurm`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

JOBS_FILE = "slurm_jobs.json"


class SubmitOnlySlurmLauncher(SlurmLauncher):
    """Submits the sweep as one SLURM job array and returns at once.

    The job ids, overrides and run dirs go to `<sweep dir>/slurm_jobs.json` and to the
    console; `python -m runner.sweeps collect <sweep dir>` reports on them later. A job
    still checkpoints and is requeued on preemption or timeout, as with `slurm`.
    """

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Submits one job per override list; returns placeholders, not results."""
        import submitit

        if self.config is None:
            raise RuntimeError("the launcher was not set up by Hydra")
        # The same executor settings as hydra-submitit-launcher's own launch().
        settings = dict(self.params)
        folder = settings.pop("submitit_folder")
        init = {f"{self._EXECUTOR}_max_num_timeout": settings.pop("max_num_timeout")}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=folder, **init)
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in common else f"{self._EXECUTOR}_{k}": v for k, v in settings.items()}
        )
        # Absolute: `collect` is often run from another folder than the launch was.
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        arguments = [
            (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
            for num, overrides in zip(numbers, job_overrides, strict=True)
        ]
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        records = [
            {
                "job_id": job.job_id,
                "num": num,
                "overrides": " ".join(filter_overrides(overrides)),
                "run_dir": str(sweep_dir / str(num)),
            }
            for job, num, overrides in zip(jobs, numbers, job_overrides, strict=True)
        ]
        path = sweep_dir / JOBS_FILE
        earlier = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(earlier + records, indent=2))
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
