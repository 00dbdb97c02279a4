"""Models: timm and torchvision factories, the CIFAR ResNets, and finding a classifier head.

Pretrained weights come from the Hub or, offline, from a local file (weights.py); the
model group is checked before any data is built (checks.py).

May import runner.config only. Add your own: a factory that takes `num_classes`, named
as `_target_` in conf/model/<name>.yaml.
"""
