"""Every closed set of values a config key takes, written once.

The config checks (runner.config.value_checks) and the code that acts on a value both
read these tuples, so a new choice is added in one place.
"""

from __future__ import annotations

MODES = ("train", "eval", "predict", "preview", "throughput")
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
PRECISIONS = ("auto", "32", "bf16", "16")
MONITOR_MODES = ("max", "min")
MONITORABLE = (
    "val/acc",
    "val/loss",
    "val/balanced_acc",
    "val/macro_f1",
    "val/top5",
    "train/loss",
    "train/acc",
)
NAN_POLICIES = ("stop", "skip")
LR_SCALING = ("none", "linear", "sqrt")
CLASS_WEIGHTS = ("balanced", "effective")
CIFAR_VARIANTS = ("cifar10", "cifar100")
ON_BAD_FILE = ("skip", "error")
NOISE_TYPES = ("symmetric", "asymmetric")
TTA = ("none", "flip")
EVAL_DATA = ("stored", "current")

# Keys of a config group that the runner reads itself; the group's `_target_` gets the
# others. Data: the real-world switches, the curation files and k-fold, applied to every
# data set alike.
DATA_SWITCHES = ("imbalance_ratio", "label_noise", "noise_type", "fraction", "samples_per_class")
DATA_CURATION_KEYS = ("exclude", "relabel")
DATA_FOLD_KEYS = ("num_folds", "fold")
OPTIM_RUNNER_KEYS = ("backbone_lr_mult", "norm_lr_mult", "filter_bias_and_bn")
# The data keys that change the train split (and k-fold's val split), never the test split.
TRAIN_SPLIT_ONLY_KEYS = (*DATA_SWITCHES, *DATA_CURATION_KEYS, *DATA_FOLD_KEYS)
RUNNER_GROUP_KEYS = {
    "data": (*DATA_SWITCHES, *DATA_CURATION_KEYS, *DATA_FOLD_KEYS),
    "optim": OPTIM_RUNNER_KEYS,
}
