"""MLflow's system metrics for a run that the tracker drives through explicit run ids.

MLflow samples CPU, memory, disk and network use (psutil) and, where an NVIDIA GPU and
nvidia-ml-py are present, GPU utilisation and memory, on a background thread, and logs
them as `system/*` metrics (the run page's System metrics tab). `mlflow.start_run`
starts that monitor for runs it opens; this tracker opens runs with `MlflowClient`, so
it starts MLflow's monitor itself for its run.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class SystemMetrics:
    """MLflow's system-metrics monitor for one run, started and stopped by the tracker.

    Args:
        run_id: The run to log into.
        tracking_uri: Its store.
        interval_s: Seconds between samples (each sample is logged at once).
        resume: The run was reopened: continue its system-metric steps.
    """

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float, resume: bool) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.interval_s = interval_s
        self.resume = resume
        self.monitor: Any = None

    def start(self) -> None:
        """Starts sampling; a monitor that cannot start is logged and left out."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=self.interval_s,
                samples_before_logging=1,
                resume_logging=self.resume,
                tracking_uri=self.tracking_uri,
            )
            self.monitor.start()
        except Exception as err:  # psutil missing, an odd platform: the run goes on
            log.warning("system metrics are off: %s", err)
            self.monitor = None

    def stop(self) -> None:
        """Stops sampling and sends what was sampled (before the run's status is set)."""
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.finish()
