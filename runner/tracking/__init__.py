"""Tracking: the `Tracker` protocol, the MLflow tracker with its outbox, the null tracker.

The MLflow side also logs (and fetches back) a run's model, its dataset inputs and MLflow's
system metrics; the model arrives as a torch module and the datasets as records, so this
package still imports no training code.

May import runner.config only. It knows nothing of data, models or the training loop:
a run hands it params, metrics, tags and files.

    python -m runner.tracking reap [--tracking-uri URI]   # stale RUNNING runs -> KILLED
    python -m runner.tracking replay FILE                 # send logs a server missed
"""

import os

# MLflow prints a run's URL as given, a password in it included, when the run ends; the
# runner prints its own, with the password as `***`.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
