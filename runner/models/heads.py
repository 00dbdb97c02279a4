"""The classifier head of a model: the layer that maps penultimate features to logits."""

from __future__ import annotations

from torch import nn


def classifier_layer(
    model: nn.Module, num_classes: int | None = None, *, trainable: bool = False
) -> nn.Module:
    """The model's classifier layer.

    timm models name it (`get_classifier()`); for others it is the last `nn.Linear`
    (torchvision's `fc`/`heads`, the CIFAR ResNets' `fc`).

    Args:
        model: The model.
        num_classes: When given, a fallback Linear must have this many outputs.
        trainable: Take timm's head only when it has parameters (not an Identity).

    Raises:
        ValueError: The model has no such layer.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module) and (not trainable or any(True for _ in head.parameters())):
            return head
    linears = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and num_classes in (None, m.out_features)
    ]
    if not linears:
        wanted = f" with {num_classes} outputs" if num_classes is not None else ""
        raise ValueError(
            f"{type(model).__name__} has no classifier layer (an nn.Linear{wanted}) whose "
            "input could serve as the embedding"
        )
    return linears[-1]
