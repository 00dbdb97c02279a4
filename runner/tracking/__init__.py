"""Tracking: the `Tracker` protocol, the MLflow tracker with its outbox, the null tracker.

May import runner.config only. It knows nothing of data, models or the training loop:
a run hands it params, metrics, tags and files.

    python -m runner.tracking reap [--tracking-uri URI]   # stale RUNNING runs -> KILLED
    python -m runner.tracking replay FILE                 # send logs a server missed
"""
