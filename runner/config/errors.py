"""The mistakes a user can make, as exceptions whose message says everything needed.

A `UserError`'s message names the key or file, the value and the fix. `runner.cli` shows
it as one line, without a traceback (`HYDRA_FULL_ERROR=1` shows the traceback as well);
every other exception is a bug or an outage and keeps its traceback.
"""

from __future__ import annotations

import os


def traceback_wanted() -> bool:
    """Whether `HYDRA_FULL_ERROR=1` asks for a mistake's traceback besides its line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


class UserError(Exception):
    """A mistake in what the command asked for; the message says what to change."""


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message lists every problem found."""
