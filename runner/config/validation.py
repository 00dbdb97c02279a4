"""Validation: reject a bad config, naming every bad key, before any compute is spent."""

from __future__ import annotations

import itertools
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from runner.config import choices
from runner.config.errors import ConfigError
from runner.config.group_keys import unexpected_group_keys
from runner.config.location_checks import (
    CURATION_COLUMNS,
    csv_file_problem,
    image_folder_root_problem,
)
from runner.config.modes import held_out_problems, job_mode, mode_problems
from runner.config.redaction import public_uri
from runner.config.resolvers import monitor_mode_for
from runner.config.sweep_values import read_sweeps, values_of
from runner.config.targets import untrusted_targets
from runner.config.value_checks import (
    CHECKS,
    OPTION_CHECKS,
    OPTION_KEYS,
    SCE_TARGET,
    fold_problem,
    is_number,
    num_folds_problem,
)

REQUIRED_GROUPS = ("data", "aug", "model", "optim", "sched", "loss", "sampler", "logger")

# Top-level keys a config may have: the groups, the run's own settings, and the keys of
# modes and tools that are added on the command line (`+preview_only=true`).
TOP_LEVEL_KEYS = frozenset(
    {*REQUIRED_GROUPS, "trainer", "seed", "paths", "allowed_targets"}
    | {"preview_only", "throughput", "mode", "ckpt", "eval", "predict", "analysis", "sweep"}
    | {"experiment", "debug", "hparams_search", "optuna", "hydra", "audit"}
)
# Nodes whose keys are fixed: an added key there is a typo, not a new option.
CLOSED_NODES = ("trainer", "paths", "eval", "predict", "analysis", "audit")
# Pairs of keys of which one at most may be set.
EXCLUSIVE_KEYS = (
    ("trainer.overfit_batches", "trainer.limit_batches"),
    ("data.fraction", "data.samples_per_class"),
)
# Keys whose value may hold a password (user:password@host): shown without it.
URI_KEYS = ("logger.tracking_uri", "logger.fallback_uri")
# The image-folder data set's function (its folder is checked before a train run starts).
IMAGEFOLDER_TARGET = "runner.data.sets.imagefolder.load_imagefolder"


def validate(cfg: DictConfig) -> None:
    """Checks a composed config and raises one error listing every problem.

    Checks that every value resolves (no `???`, no unset `${oc.env:...}`), that the
    required groups are present, and the type and range of every known key.

    Args:
        cfg: The composed config (with or without the `hydra` node).

    Raises:
        ConfigError: Naming each bad key, its value and what is expected.
    """
    problems: list[str] = []
    for group in REQUIRED_GROUPS:
        if group not in cfg:
            problems.append(f"config group '{group}' is missing: choose one with {group}=<option>")
    problems += _data_option_problems(cfg)
    if problems:  # other keys follow ${data.image_size}: their checks would fail on it
        raise ConfigError(_problem_list(problems))

    # A `???` key that a multirun sets (`-m model=timm model.name=a,b`) is checked in
    # each job, where it has its value.
    swept_values, swept_keys = read_sweeps(cfg)
    for key, check in CHECKS.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            if key not in swept_values:
                problems.append(f"{key} is required (it is '???'): set it with {key}=<value>")
            continue
        except InterpolationResolutionError as err:
            problems.append(f"{key} cannot be resolved: {err}")
            continue
        if value is None and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        if key in OPTION_KEYS:  # a key whose check depends on the chosen option
            group_target = OmegaConf.select(cfg, f"{key.split('.')[0]}._target_", default=None)
            check = OPTION_CHECKS.get((key, str(group_target)), check)
        expected = check(value)
        if expected is not None:
            shown = public_uri(value) if key in URI_KEYS and isinstance(value, str) else value
            problems.append(f"{key}={shown!r} is invalid: expected {expected}")

    problems.extend(_unresolvable_values(cfg, swept_values))
    problems.extend(_unknown_keys(cfg))
    untrusted = untrusted_targets(cfg)
    problems.extend(untrusted)
    if not untrusted:  # the check imports the targets
        problems.extend(unexpected_group_keys(cfg))
    data_fractions = [OmegaConf.select(cfg, f"data.{k}") for k in ("val_fraction", "test_fraction")]
    if all(is_number(f) for f in data_fractions) and sum(data_fractions) >= 1:
        problems.append(
            f"data.val_fraction + data.test_fraction = {sum(data_fractions):g} leaves no "
            "training data: keep their sum below 1"
        )
    # Each pair cuts the same thing its own way (the epoch; the train split): one only.
    for one, other in EXCLUSIVE_KEYS:
        values = OmegaConf.select(cfg, one), OmegaConf.select(cfg, other)
        if all(v is not None for v in values):
            problems.append(
                f"{one}={values[0]!r} and {other}={values[1]!r} are both set: choose one "
                "(the other null)"
            )
    problems.extend(_image_size_problems(cfg))
    problems.extend(_monitor_problems(cfg, swept_keys))
    problems.extend(mode_problems(cfg, swept_values) + held_out_problems(cfg))
    problems.extend(_model_registry_problems(cfg))
    problems.extend(_fold_problems(cfg, swept_values, swept_keys))
    problems.extend(_curation_problems(cfg, swept_values))
    problems.extend(_data_root_problems(cfg, swept_values))
    problems.extend(_robust_loss_problems(cfg))
    problems.extend(_nesterov_problems(cfg))
    problems.extend(_weights_problems(cfg))
    problems.extend(_noise_problems(cfg))
    if problems:
        raise ConfigError(_problem_list(problems))


def _problem_list(problems: list[str]) -> str:
    """The message of a config with these problems."""
    plural = "" if len(problems) == 1 else "s"
    listing = "\n  - ".join(problems)
    return f"Invalid config ({len(problems)} problem{plural}):\n  - {listing}"


# What a data option's own file sets (README: Extending, A data set): without `name` the
# run failed with OmegaConf's "Key 'name' is not in struct", and without `image_size` the
# config check itself failed on `${data.image_size}`.
DATA_OPTION_KEYS = ("name", "image_size")


def _data_option_problems(cfg: DictConfig) -> list[str]:
    """The keys a data option lacks: its own (DATA_OPTION_KEYS) and the `_switches` block."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or "_target_" not in data:
        return []
    # `in data.keys()`: `key in data` is False for a `???` value, which the command line
    # (or each job of a sweep) sets, as data=hf's `name: ???` asks.
    present = set(data.keys())
    problems = [
        f"data.{key} is missing: the data option's YAML file sets it (README: Extending, "
        f"A data set), e.g. {key}: {'my_data' if key == 'name' else 64}"
        for key in DATA_OPTION_KEYS
        if key not in present
    ]
    lacking = [key for key in choices.DATA_SWITCHES if key not in present]
    if lacking:
        problems.append(
            f"data.{lacking[0]} is missing: the data option's YAML file brings the switches "
            "every data set has (imbalance_ratio, label_noise, ...) with `defaults: "
            "[_switches, _self_]`"
        )
    return problems


def _monitor_problems(cfg: DictConfig, swept_keys: list[str]) -> list[str]:
    """One metric ranks a sweep's jobs; trainer.monitor_mode is its direction."""
    swept = [
        f"-m {key}=...: the jobs of one sweep are ranked by one metric; run one sweep per "
        f"{key.split('.')[1]} (or compare the other metric across the child runs)"
        for key in ("trainer.monitor", "trainer.monitor_mode")
        if key in swept_keys
    ]
    monitor = OmegaConf.select(cfg, "trainer.monitor", default=None)
    mode = OmegaConf.select(cfg, "trainer.monitor_mode", default=None)
    if monitor is None or mode not in choices.MONITOR_MODES:
        return swept
    expected = monitor_mode_for(monitor)
    if mode == expected:
        return swept
    better = "lower" if expected == "min" else "higher"
    return [
        *swept,
        f"trainer.monitor_mode={mode} contradicts trainer.monitor={monitor}, which is better "
        f"{better}: leave trainer.monitor_mode out (it follows the metric) or set it to "
        f"{expected}",
    ]


def _image_size_problems(cfg: DictConfig) -> list[str]:
    """The augmentation's eval size must be the data's: else train and test sizes differ."""
    data_size, aug_size = (OmegaConf.select(cfg, f"{k}.image_size") for k in ("data", "aug"))
    if not is_number(data_size):
        return []
    problems = []
    if is_number(aug_size) and data_size != aug_size:
        problems.append(
            f"aug.image_size={aug_size!r} differs from data.image_size={data_size!r}: the "
            "model would train at one size and be tested at the other; set data.image_size "
            "(aug.image_size follows it)"
        )
    transforms = OmegaConf.select(cfg, "aug.transforms", default=None)
    for index, transform in enumerate(transforms if OmegaConf.is_list(transforms) else []):
        size = transform.get("size") if OmegaConf.is_dict(transform) else None
        sides = list(size) if OmegaConf.is_list(size) else [size]
        if size is None or not all(is_number(side) for side in sides):
            continue
        if any(side != data_size for side in sides):  # a crop's output: the training size
            shown = OmegaConf.to_container(size) if OmegaConf.is_list(size) else size
            problems.append(
                f"aug.transforms.{index}.size={shown} differs from data.image_size="
                f"{data_size}: the model would train at that size and be tested at "
                f"{data_size}; set data.image_size (the presets' sizes follow it)"
            )
    patch = OmegaConf.select(cfg, "model.patch_size", default=None)
    if is_number(patch) and patch >= 1 and data_size % patch:
        # timm's patch embedding (a strided convolution) drops what is left over.
        below, above = data_size // patch * patch, (data_size // patch + 1) * patch
        if below:
            unseen = f"would never see the last {data_size % patch} pixel rows and columns"
            sizes = f"data.image_size={below} or {above}"
        else:  # a patch larger than the image: no patch at all
            unseen, sizes = "would see none of the image", f"data.image_size={above}"
        problems.append(
            f"data.image_size={data_size} is not a multiple of model.patch_size={patch}: the "
            f"model {unseen}. Use {sizes}, or another model.patch_size"
        )
    return problems


def _model_registry_problems(cfg: DictConfig) -> list[str]:
    """A registered model version is made from the exported model: it needs one."""
    name = OmegaConf.select(cfg, "logger.registered_model_name", default=None)
    if name is None or OmegaConf.select(cfg, "logger.export_model", default=True) is not False:
        return []
    return [
        f"logger.registered_model_name={name!r} needs logger.export_model=true (a registered "
        "version is made from the exported model): set it, or registered_model_name=null"
    ]


def _fold_problems(
    cfg: DictConfig, swept_values: dict[str, list[Any] | None], swept_keys: list[str]
) -> list[str]:
    """data.fold needs data.num_folds and lies in 0..K-1; the audit needs k-fold.

    `swept_values` and `swept_keys` are what `read_sweeps` found.
    """
    if OmegaConf.select(cfg, "data", default=None) is None:
        return []
    folds = values_of(cfg, "data.num_folds", swept_values)
    fold = values_of(cfg, "data.fold", swept_values)
    problems = []
    for k, f in itertools.product(folds, fold):
        if num_folds_problem(k) is not None or fold_problem(f) is not None:
            continue  # the type checks report these
        if k is None and f is not None:
            problems.append(
                f"data.fold={f} needs data.num_folds (the number of folds K): set e.g. "
                f"data.num_folds=5, or leave data.fold out"
            )
        elif k is not None and f is None:
            problems.append(
                f"data.num_folds={k} needs data.fold=<0..{k - 1}>: run the {k} fold jobs "
                f"as python run.py -m data.num_folds={k} 'data.fold=range({k})'"
            )
        elif k is not None and not f < k:
            problems.append(
                f"data.fold={f} is outside 0..{k - 1} (data.num_folds={k}): use "
                f"'data.fold=range({k})' or a fold below {k}"
            )
    overfit = OmegaConf.select(cfg, "trainer.overfit_batches", default=None)
    if overfit is not None and folds != [None]:
        problems.append(
            f"trainer.overfit_batches={overfit} validates on the train batches, so a k-fold "
            "job would hold out no fold: leave data.num_folds out (or debug=overfit off)"
        )
    if OmegaConf.select(cfg, "audit.enabled", default=False) is True:
        others = [key for key in swept_keys if key != "data.fold"]
        if others:
            verb = "is" if len(others) == 1 else "are"
            problems.append(
                f"audit.enabled=true merges one job per fold, but {', '.join(others)} {verb} "
                "swept as well (two jobs would hold out the same fold): sweep only "
                "data.fold, or set audit.enabled=false"
            )
        if folds == [None]:
            problems.append(
                "audit.enabled=true needs k-fold jobs: run python run.py -m experiment=audit "
                "(it sets data.num_folds and sweeps data.fold)"
            )
        elif str(OmegaConf.select(cfg, "hydra.mode", default="")) == "RunMode.RUN":
            problems.append(
                "audit.enabled=true audits the K fold jobs of a sweep: add -m "
                "(python run.py -m experiment=audit), or set audit.enabled=false to run "
                "one fold job alone"
            )
    return problems


def _curation_problems(cfg: DictConfig, swept_values: dict[str, list[Any] | None]) -> list[str]:
    """data.exclude and data.relabel name readable CSV files with the needed columns.

    Not in eval and predict, which read no such file: they test the checkpoint on a test
    split that the files leave as it is (eval drops the keys; one typed is refused).
    """
    if job_mode(cfg) in ("eval", "predict"):
        return []
    problems = []
    for key, columns in CURATION_COLUMNS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or swept_values.get(key) is not None:
            continue
        problem = csv_file_problem(value, columns)
        if problem is not None:
            problems.append(f"{key}={value!r} {problem}")
    return problems


def _data_root_problems(cfg: DictConfig, swept_values: dict[str, list[Any] | None]) -> list[str]:
    """A train run's image folder exists and holds train/ (before its run dir is made).

    Only where a run trains: eval and predict may test on a folder without train/.
    """
    target = OmegaConf.select(cfg, "data._target_", default=None)
    if job_mode(cfg) != "train" or target != IMAGEFOLDER_TARGET:
        return []
    root = OmegaConf.select(cfg, "data.root", default=None)
    if not isinstance(root, str) or not root or swept_values.get("data.root") is not None:
        return []
    problem = image_folder_root_problem(root)
    return [problem] if problem is not None else []


def _weights_problems(cfg: DictConfig) -> list[str]:
    """A torchvision model takes downloaded weights or a weights file, not both.

    The file's tensors replace the downloaded ones: the download was spent for nothing,
    and which weights the run starts from is not what the command seems to say.
    """
    weights = OmegaConf.select(cfg, "model.weights", default=None)
    pretrained_file = OmegaConf.select(cfg, "model.pretrained_file", default=None)
    if weights is None or pretrained_file is None:
        return []
    return [
        f"model.weights={weights!r} and model.pretrained_file={pretrained_file!r} are both "
        "set, and the file's weights would replace the downloaded ones: choose one "
        "(model.weights=null to start from the file)"
    ]


def _nesterov_problems(cfg: DictConfig) -> list[str]:
    """Nesterov momentum needs a momentum and no dampening (torch refuses it at build)."""
    optim = OmegaConf.select(cfg, "optim", default=None)
    if not isinstance(optim, DictConfig) or optim.get("nesterov") is not True:
        return []
    momentum, dampening = optim.get("momentum", 0), optim.get("dampening", 0)
    if not (is_number(momentum) and is_number(dampening)):
        return []  # the type checks report these
    if momentum > 0 and dampening == 0:
        return []
    return [
        f"optim.nesterov=true needs optim.momentum > 0 and optim.dampening=0 (they are "
        f"{momentum!r} and {dampening!r}): set optim.nesterov=false, or a momentum such "
        "as optim.momentum=0.9 without dampening"
    ]


def _robust_loss_problems(cfg: DictConfig) -> list[str]:
    """loss=sce needs a positive weight on at least one of its two terms."""
    if str(OmegaConf.select(cfg, "loss._target_", default="")) != SCE_TARGET:
        return []
    alpha, beta = (OmegaConf.select(cfg, f"loss.{k}", default=None) for k in ("alpha", "beta"))
    if is_number(alpha) and is_number(beta) and alpha == 0 and beta == 0:
        return ["loss.alpha=0 and loss.beta=0 leave loss=sce with no loss: make one > 0"]
    return []


def _noise_problems(cfg: DictConfig) -> list[str]:
    """Asymmetric noise of 0.5 or more moves most of each class into the next one."""
    rate = OmegaConf.select(cfg, "data.label_noise", default=None)
    kind = OmegaConf.select(cfg, "data.noise_type", default=None)
    if kind == "asymmetric" and is_number(rate) and rate >= 0.5:
        return [
            f"data.label_noise={rate} with data.noise_type=asymmetric gives most of each "
            "class the next class's label, so the labels name other classes than the "
            "images: use a rate below 0.5 (or symmetric noise)"
        ]
    return []


def _unresolvable_values(cfg: DictConfig, swept: dict[str, Any]) -> list[str]:
    """Finds `???` values and interpolations that fail (of `hydra`: in sweeper, launcher).

    Hydra's sweeper and launcher are checked too: Hydra builds them, with a traceback
    where a value failed. A `???` that a multirun sets (a key of `swept`) is left to each
    job's check.
    """
    problems = []

    def walk(node: Any, prefix: str) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            path = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}]"
            if path in CHECKS or path == "hydra" or path == "paths.run_dir":
                continue
            if OmegaConf.is_missing(node, key):
                if path not in swept:
                    problems.append(f"{path} is required (it is '???'): set it with {path}=<value>")
                continue
            try:
                child = node[key]
            except InterpolationResolutionError as err:
                problems.append(f"{path} cannot be resolved: {err}")
                continue
            if OmegaConf.is_config(child):
                walk(child, f"{path}.")

    walk(cfg, "")
    for built_by_hydra in ("hydra.sweeper", "hydra.launcher"):
        node = OmegaConf.select(cfg, built_by_hydra, default=None)
        if isinstance(node, DictConfig):
            walk(node, f"{built_by_hydra}.")
    return problems


def _unknown_keys(cfg: DictConfig) -> list[str]:
    known = {
        node: {key.split(".", 1)[1] for key in CHECKS if key.startswith(f"{node}.")}
        for node in CLOSED_NODES
    }
    known["paths"] = {"root_dir", "output_dir", "run_dir"}
    listing = ", ".join(sorted(TOP_LEVEL_KEYS - {"hydra"}))
    problems = [
        f"{key!r} is not a known top-level key (known: {listing})"
        for key in cfg
        if key not in TOP_LEVEL_KEYS
    ]
    for node in CLOSED_NODES:
        section = cfg.get(node)
        if isinstance(section, DictConfig):
            for key in section:
                if key not in known[node]:
                    problems.append(
                        f"{node}.{key} is not a known key of {node} "
                        f"(known: {', '.join(sorted(known[node]))})"
                    )
    return problems
