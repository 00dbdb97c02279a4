"""Drawing a run's plots so that one that fails costs the run nothing but that plot."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display; imported when drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Characters of a class name in an image's title: at 7 pt a 1.6-inch cell holds about 30,
# and a longer name ran into the next image's title and hid its probability.
TITLE_NAME_WIDTH = 18


def fitted(text: str, width: int = TITLE_NAME_WIDTH) -> str:
    """`text` cut to `width` characters, its end marked with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def draw_each(plots: dict[str, Callable[[Path], Any]], run_dir: Path, what: str = "") -> list[Path]:
    """Draws each `{file name: draw(path)}` into run_dir; returns the files written.

    A plot that fails is named in the log (prefixed by `what`) and left out.
    """
    written = []
    for name, draw in plots.items():
        try:
            draw(run_dir / name)
        except Exception as err:  # a plot must not cost the run its training or results
            log.error("%s%s was not written: %s", f"{what}: " if what else "", name, err)
            continue
        written.append(run_dir / name)
    return written


def drawable(images: torch.Tensor) -> torch.Tensor:
    """Images (..., C, H, W) with 1 or 3 channels, as an image plot takes them.

    Other channel counts (`data.channels=2`, or 4 drawn as transparency) show their
    first channel, in gray.
    """
    return images if images.shape[-3] in (1, 3) else images[..., :1, :, :]
