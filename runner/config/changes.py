"""What differs between two configs, key by key: a run dir is resumed only by its own config.

A run dir's `config_resolved.yaml` records the config that wrote its checkpoints. Running
again in that dir continues the run only when the command's config is the same, apart
from the keys in `MAY_CHANGE_ON_RESUME` (how long to train, how often to log, where to
write reports): another lr, model, data or tracking store would continue one run with
another's weights and MLflow run.
"""

from __future__ import annotations

from typing import Any

# Keys (or prefixes ending in ".") a resumed run may change; README "What a run leaves
# behind" lists them.
MAY_CHANGE_ON_RESUME = (
    "trainer.max_epochs",
    "trainer.early_stopping_patience",
    "trainer.log_every_n_steps",
    "trainer.eval_batch_size",
    "trainer.keep_host_memory",
    "trainer.profile",
    "logger.delivery_timeout_s",
    "logger.system_metrics",  # what is sampled from here on, not what was trained
    "logger.system_metrics_interval_s",
    "trainer.resume",
    "data.num_workers",
    "data.cache_dir",
    # A train file it skips now and did not before changes the train ids: refused anyway.
    "data.on_bad_file",
    "analysis.",
    "sweep.",
    "paths.root_dir",
    "mode",
    "ckpt",
    "eval.",
    "predict.",
)

# Keys added to conf/ after runs were written without them, each with the value that
# behaves as its absence did. A run dir from before a key existed (a job requeued across
# an upgrade of the code) resumes when the key has that value; another value is a change.
ADDED_KEYS = {
    "optim.norm_lr_mult": 1.0,
    "optim.filter_bias_and_bn": True,
    "logger.delivery_timeout_s": 30,
}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, {"d": 2}]} -> {"a.b": 1, "c": [1, {"d": 2}]} (lists whole)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def config_changes(
    saved: dict[str, Any], current: dict[str, Any], may_change: tuple[str, ...] = ()
) -> list[str]:
    """The keys whose values differ, as "key: old -> new", except those in `may_change`.

    Args:
        saved: The earlier config (plain containers).
        current: This command's config (plain containers, redacted the same way).
        may_change: Keys, or prefixes ending in ".", whose changes are allowed.
    """
    allowed = tuple(p for p in may_change if p.endswith("."))
    return [
        f"{key}: {old!r} -> {new!r}"
        for key, (old, new) in changed_values(saved, current).items()
        if key not in may_change and not key.startswith(allowed)
    ]


def changed_values(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every flattened key whose value differs: key -> (old, new), "(absent)" for none.

    A key of `ADDED_KEYS` that `saved` lacks and `current` has at its listed value is no
    difference: it does what its absence did.
    """
    before, after = flatten(saved), flatten(current)
    for key, value in ADDED_KEYS.items():
        if key not in before and key in after and after[key] == value:
            before[key] = value
    pairs = {
        key: (before.get(key, "(absent)"), after.get(key, "(absent)"))
        for key in sorted(set(before) | set(after))
    }
    return {key: (old, new) for key, (old, new) in pairs.items() if old != new}
