"""Sweeps: the files in a sweep dir and everything that reads or writes them.

The manifest, a job's side, the launcher's callback, the summary, an Optuna sweep's
settings (checked before it starts), its study's batches of trials, search space and
trials seen from a job, the warning about SQLite stores on a cluster, collecting
submitted SLURM jobs, and a k-fold sweep's out-of-fold outputs and their audit.

May import runner.config, runner.tracking and runner.data (the audit draws its
thumbnails from the data set), and the start checks of runner.augment and runner.models
(a grid's jobs are checked as each job checks itself); never the training loop.

    python -m runner.sweeps collect SWEEP_DIR             # state and results of its jobs
    python -m runner.sweeps summary SWEEP_DIR [METRIC] [max|min]   # rebuild summary.md
    python -m runner.sweeps audit SWEEP_DIR               # redo a k-fold sweep's audit
"""
