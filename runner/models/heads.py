"""The classifier head of a model: the layer that maps penultimate features to logits."""

from __future__ import annotations

from torch import nn


def classifier_layer(
    model: nn.Module, num_classes: int | None = None, *, trainable: bool = False
) -> nn.Module:
    """The model's classifier layer.

    timm models name it (`get_classifier()`; a distilled model's main head, not its
    distillation head); for others it is the last `nn.Linear` (torchvision's
    `fc`/`heads`, the CIFAR ResNets' `fc`).

    Args:
        model: The model.
        num_classes: When given, a fallback Linear must have this many outputs.
        trainable: Take timm's head only when it has parameters (not an Identity).

    Raises:
        ValueError: The model has no such layer.
    """
    timm_heads = _timm_heads(model)
    if timm_heads:
        head = timm_heads[0]
        if not trainable or any(True for _ in head.parameters()):
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


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """Every layer that maps the features to logits: a distilled timm model has two.

    Raises:
        ValueError: The model has no such layer.
    """
    return _timm_heads(model) or [classifier_layer(model)]


def _timm_heads(model: nn.Module) -> list[nn.Module]:
    """The heads timm's `get_classifier()` names ([] for models without it).

    It returns one module, or for distilled models (DeiT, LeViT) the pair (head,
    distillation head), whose logits such a model averages at inference.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return []
    heads = get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else [heads]
    return [h for h in heads if isinstance(h, nn.Module)]
