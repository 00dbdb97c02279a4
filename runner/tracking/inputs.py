"""What a run's data inputs look like to a tracker: one `DatasetRecord` per split.

The training side (runner.training.lineage) fills them in from the data and its config;
the MLflow tracker turns each into a dataset input of the run (`mlflow.log_input`'s
record: name, digest, source, schema, profile, and the context tag train/val/test).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# MLflow's input tag that names how a run used a data set (mlflow.log_input's `context`).
CONTEXT_TAG = "mlflow.data.context"


@dataclass(frozen=True)
class DatasetRecord:
    """One split of a data set as a dataset input of a run.

    Attributes:
        name: The data set's name (`data.name`).
        digest: Changes when the split's content or any real-world switch changes.
        source_type: MLflow's kind of source: "local", "hugging_face" or "code".
        source: JSON of where the data comes from (a root, a Hub name, a bundled set).
        context: How the run uses it: "train", "val" or "test".
        schema: JSON of the split's tensors (images and labels), or None.
        profile: JSON of its size and class counts, or None.
    """

    name: str
    digest: str
    source_type: str
    source: str
    context: str
    schema: str | None = None
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON types (the outbox saves it that way)."""
        return asdict(self)
