"""What an augmentation does to a few training images per class, as a PNG grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from runner.augment.device import DeviceAugment
from runner.data.splits import Split
from runner.reports.drawing import drawable, pyplot


@dataclass
class Preview:
    """Augmented training images, one row per class, ready to be drawn.

    Attributes:
        images: (rows * columns, C, H, W) float images in [0, 1], on the CPU.
        columns: Images per row.
        row_names: The class name of each row.
        title: What the augmentation does (its `describe()`).
    """

    images: torch.Tensor
    columns: int
    row_names: list[str]
    title: str


def augment_preview(
    augment: DeviceAugment,
    split: Split,
    class_names: Sequence[str],
    *,
    seed: int,
    device: torch.device | None = None,
    per_class: int = 8,
    max_classes: int = 10,
    max_side: int = 128,
) -> Preview:
    """Augments a few training images per class with a forked RNG seeded with `seed`.

    The same seed gives the same images, and the training run's random stream is left
    untouched. Cheap (one batch); drawing them (`draw_preview`) can wait.

    Args:
        augment: The training augmentation (its mode is restored afterwards).
        split: The training split (resident or streaming), on any device.
        class_names: Name per class id, for the row labels.
        seed: Seed of the augmentation draws.
        device: Where to augment; None = where the split is.
        per_class: Images per row (a class with fewer ends its row in blank cells).
        max_classes: Rows at most (the first classes).
        max_side: Larger images are shrunk to this side for the grid.
    """
    host_labels = split.labels.cpu()
    device = device or split.labels.device
    rows = [torch.nonzero(host_labels == c).flatten()[:per_class] for c in range(len(class_names))]
    shown = [(c, idx) for c, idx in enumerate(rows) if len(idx)][:max_classes]
    cols = max(len(idx) for _, idx in shown)
    index = torch.cat([idx for _, idx in shown])
    images, labels = split.take(index)  # streaming splits decode just these
    batch, batch_labels = images.to(device), labels.to(device)

    was_training = augment.training
    # manual_seed seeds every CUDA device, so every one is forked and restored.
    cuda_devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
        torch.manual_seed(seed)
        augment.train()
        out, _ = augment.mix(augment(batch), batch_labels)
    augment.train(was_training)

    out = out.detach().float().clamp(0, 1).cpu()
    if max(out.shape[-2:]) > max_side:
        out = F.interpolate(out, size=(max_side, max_side), mode="bilinear", antialias=True)
    # A rare class's row ends in blank cells; the other rows keep all their images. The
    # rows are counted from the labels `take` gave: a streamed file that did not decode
    # is left out, and the rows after it would otherwise shift into the wrong class.
    cells, start = [], 0
    decoded = labels.cpu()
    for c, _ in shown:
        count = int((decoded == c).sum())
        cells += [out[start : start + count], torch.ones(cols - count, *out.shape[1:])]
        start += count
    return Preview(torch.cat(cells), cols, [class_names[c] for c, _ in shown], augment.describe())


def draw_preview(preview: Preview, path: Path) -> Path:
    """Draws the preview as a PNG grid (matplotlib), one row per class; returns `path`."""
    plt = pyplot()
    from torchvision.utils import make_grid

    grid = make_grid(drawable(preview.images), nrow=preview.columns, padding=2, pad_value=1.0)
    cell = preview.images.shape[-1] + 2  # make_grid's pitch: image plus padding
    inches = max(1.0, 96 / cell) / 100  # per grid pixel; small images are drawn larger
    fig, ax = plt.subplots(figsize=(grid.shape[2] * inches + 1.5, grid.shape[1] * inches + 0.8))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    row_centres = [1 + cell * row + cell / 2 for row in range(len(preview.row_names))]
    ax.set_yticks(row_centres, preview.row_names)
    ax.set_xticks([])
    ax.set_title(preview.title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_preview_grid(
    augment: DeviceAugment,
    split: Split,
    class_names: Sequence[str],
    path: Path,
    *,
    seed: int,
    device: torch.device | None = None,
    **options: int,
) -> Path:
    """Saves a PNG grid of augmented training images: `augment_preview`, then `draw_preview`.

    `options` are augment_preview's per_class, max_classes and max_side.
    """
    return draw_preview(
        augment_preview(augment, split, class_names, seed=seed, device=device, **options), path
    )
