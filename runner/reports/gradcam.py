"""Grad-CAM (captum's LayerGradCam) for any CNN: choosing the layer, computing the maps.

captum is imported inside `gradcam_maps`, so importing this module costs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

# Module types whose output is never a good Grad-CAM target: they only pass on, pool or
# reshape the features of the layer before them.
_PASS_THROUGH = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
)


class GradCamError(ValueError):
    """An analysis setting that cannot be used with this model; names the key and fix.

    Attributes:
        largest: The side of the model's largest feature map when `auto` found none big
            enough; None when it found no feature map at all (a ViT) or a name was wrong.
    """

    def __init__(self, message: str, largest: int | None = None) -> None:
        super().__init__(message)
        self.largest = largest


def find_gradcam_layer(
    model: nn.Module, example: torch.Tensor, name: str = "auto", min_size: int = 4
) -> tuple[str, nn.Module]:
    """The layer Grad-CAM weighs: by name, or the last feature map of at least min_size.

    With `name="auto"`, one forward pass records every module whose output is a 4-D
    feature map (N, C, H, W); the last one (in call order, so a stage wins over the
    layers inside it) with H and W >= `min_size` is chosen, skipping activations,
    dropout and pooling; of a timm model, the last such stage its `feature_info` names.
    That is the last stage of a CNN's feature extractor at usual image sizes, and an
    earlier one for small images where the last map is 1x1.

    Args:
        model: The model, in eval mode.
        example: One normalised input batch for the probing pass.
        name: "auto" or a module name from `model.named_modules()`.
        min_size: Smallest height and width of the chosen feature map (auto only).

    Returns:
        (module name, module).

    Raises:
        GradCamError: The name is not a module of the model, or no module outputs a
            feature map (e.g. a ViT: name one of its layers then).
    """
    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules or name == "":
            close = [n for n in modules if n and n.split(".")[0] == name.split(".")[0]][:8]
            raise GradCamError(
                f"analysis.gradcam_layer={name!r} is not a module of this model "
                f"(e.g. {', '.join(close or [n for n in modules if n][:8])}); use auto "
                "or a name from model.named_modules()"
            )
        return name, modules[name]
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for module_name, module in modules.items():
        if not module_name or isinstance(module, _PASS_THROUGH):
            continue
        if type(module).__module__ == "torch.nn.modules.activation":
            continue

        def hook(_module, _inputs, output, module_name=module_name):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                seen.append((module_name, tuple(output.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    fitting = [n for n, shape in seen if min(shape[-2:]) >= min_size]
    # timm names its models' stages (feature_info): the last that fits is a stage's output,
    # where the rule above may take a layer early in the next, smaller stage (the first
    # 1x1 conv of a bottleneck block keeps the size of the stage before it).
    stages = {info["module"] for info in getattr(model, "feature_info", None) or ()}
    fitting = [n for n in fitting if n in stages] or fitting
    if not fitting:
        raise GradCamError(
            f"analysis.gradcam_layer=auto found no layer with a feature map of at least "
            f"{min_size}x{min_size} (analysis.gradcam_min_size): set analysis.gradcam_layer "
            "to a module name, lower gradcam_min_size, or set analysis.num_gradcam=0",
            largest=max((min(shape[-2:]) for _, shape in seen), default=None),
        )
    return fitting[-1], modules[fitting[-1]]


def gradcam_maps(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, layer: nn.Module
) -> torch.Tensor:
    """Grad-CAM heat maps (N, H, W) in [0, 1] at the input's size, from captum.

    Args:
        model: The model, in eval mode.
        inputs: Normalised images (N, C, H, W).
        targets: Class id per image whose evidence is shown.
        layer: The layer whose activations are weighed by their gradients.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    with torch.enable_grad():
        cam = LayerGradCam(model, layer).attribute(inputs, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(
        cam.detach().float(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear"
    )
    cam = cam[:, 0]
    low = cam.flatten(1).min(1).values.view(-1, 1, 1)
    high = cam.flatten(1).max(1).values.view(-1, 1, 1)
    return ((cam - low) / (high - low).clamp_min(1e-12)).cpu()
