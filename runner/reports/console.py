"""What a person sees: the config tree, a progress bar per epoch, the final summary.

On a terminal, rich draws a bar per epoch; elsewhere (SLURM logs, CI) plain log lines
are written every `log_every_n_steps` batches instead.
"""

from __future__ import annotations

import logging
import sys
import time

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def is_terminal() -> bool:
    """Whether stdout is an interactive terminal."""
    return sys.stdout.isatty()


def print_config(cfg: DictConfig) -> None:
    """Prints the resolved config as a tree, one branch per group."""
    from rich.console import Console
    from rich.markup import escape
    from rich.syntax import Syntax
    from rich.tree import Tree

    from runner.config.redaction import redacted_container

    tree = Tree("config", guide_style="dim")
    container = redacted_container(cfg)
    for key, value in container.items():
        if isinstance(value, dict):
            text = OmegaConf.to_yaml(OmegaConf.create(value)).rstrip()
            tree.add(f"[bold]{escape(key)}[/bold]").add(Syntax(text, "yaml", theme="ansi_dark"))
        else:
            tree.add(f"[bold]{escape(key)}[/bold]: {escape(str(value))}")
    Console(force_terminal=is_terminal(), width=None if is_terminal() else 120).print(tree)


class ProgressDisplay:
    """A progress bar per epoch on a terminal, else a log line every N steps.

    Args:
        max_epochs: Number of epochs of the run (for the label).
    """

    def __init__(self, max_epochs: int):
        self.max_epochs = max_epochs
        self.terminal = is_terminal()
        self._progress = None
        self._task = None
        self._epoch = 0
        self._steps = 0
        self._batch_size = 0
        self._done_before = 0
        self._start = 0.0

    def start_epoch(self, epoch: int, steps: int, batch_size: int, done_before: int = 0) -> None:
        """Begins the display of an epoch of `steps` batches, `done_before` of them done."""
        self._epoch, self._steps, self._batch_size = epoch, steps, batch_size
        self._done_before = done_before
        self._start = time.perf_counter()
        if self.terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn(f"epoch {epoch}/{self.max_epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=steps, completed=done_before, info=""
            )

    def on_log(self, step: int, loss: torch.Tensor, acc: torch.Tensor) -> None:
        """Shows the running loss and accuracy (reads the tensors: logging intervals only)."""
        elapsed = time.perf_counter() - self._start
        rate = (step - self._done_before) * self._batch_size / max(elapsed, 1e-9)
        info = f"loss {loss.item():.4f}  acc {acc.item():.4f}  {rate:.0f} img/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        else:
            log.info("epoch %d step %d/%d  %s", self._epoch, step, self._steps, info)

    def end_epoch(self, summary: str) -> None:
        """Removes the bar and writes the epoch's one-line summary."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        log.info("epoch %d/%d  %s", self._epoch, self.max_epochs, summary)


def print_summary(rows: list[tuple[str, str]], title: str = "run summary") -> None:
    """Prints the end-of-run summary as a two-column table.

    The cells are shown as written: a path such as `ck[v2]/best.pt` is not read as
    rich's markup.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(escape(key), escape(value))
    Console(force_terminal=is_terminal(), width=None if is_terminal() else 120).print(table)
