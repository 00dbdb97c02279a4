"""Secrets never leave the process in the clear: params, tags and saved files show ***."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys whose values are never logged or saved in the clear.
SECRET_KEY = re.compile(
    r"(^|_)(token|password|passwd|secret|api_?key|access_?key|secret_?key|private_?key"
    r"|credentials?)$",
    re.IGNORECASE,
)
REDACTED = "***"
MIN_SECRET_LENGTH = 4
# Where a password sits in a URI, in three groups (before, the password, after):
# `scheme://user:password@` (up to the last "@" before the host), and a query parameter
# (`postgresql://db/x?user=u&password=pw`).
_PASSWORDS = (
    re.compile(r"(?<=://)([^:/@]*:)([^/]*)(@)"),
    re.compile(r"([?&](?:password|passwd|pwd)=)([^&#\s]*)()", re.IGNORECASE),
)
# For `_typed_public`: an interpolation with none inside it, its stand-in, and a run of
# stand-ins.
_INTERPOLATION = re.compile(r"\$\{[^{}]*\}")
_STAND_IN = re.compile("\0(\\d+)\0")
_HELD = re.compile("(?:\0\\d+\0)+")


def redacted_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers, with no secret in the clear.

    Values of keys that name a secret (token, password, api_key, ...), and values that
    hold one (`b: ${a}` or `url: https://${a}@host` where `a` is one), become '***'. A
    value taken from the environment with `${oc.env:...}`, or holding one, is kept as
    typed (`${oc.env:DATA}/pets`, `${a}`): its value is not written, and a checkpoint's
    config still rebuilds it where that variable is set (`mode=eval` of a run whose
    `data.root` came from the environment). The password of a URL is '***'
    (`logger.tracking_uri=http://user:***@host`).
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets: set[str] = set()  # values of secret-named keys
    from_env: set[str] = set()  # values read from the environment

    def redact(raw_node: Any, node: Any) -> Any:
        if isinstance(node, dict):
            kept = {}
            for key in node:
                if SECRET_KEY.search(str(key)) and node[key] is not None:
                    secrets.add(str(node[key]))
                    kept[key] = REDACTED
                else:
                    below = raw_node.get(key) if isinstance(raw_node, dict) else None
                    kept[key] = redact(below, node[key])
            return kept
        if isinstance(node, list):
            raws = raw_node if isinstance(raw_node, list) else [None] * len(node)
            return [redact(r, n) for r, n in zip(raws, node, strict=False)]
        if isinstance(raw_node, str) and "oc.env" in raw_node:
            from_env.add(str(node))
            return _typed_public(raw_node)  # a password typed beside it stays hidden
        return public_uri(node) if isinstance(node, str) else node

    def redact_copies(raw_node: Any, node: Any) -> Any:  # values that carry one found above
        if isinstance(node, dict):
            below = raw_node if isinstance(raw_node, dict) else {}
            return {key: redact_copies(below.get(key), value) for key, value in node.items()}
        if isinstance(node, list):
            raws = raw_node if isinstance(raw_node, list) else [None] * len(node)
            return [redact_copies(r, n) for r, n in zip(raws, node, strict=False)]
        if not isinstance(node, str):
            return node
        if any(s in node for s in secrets):
            return REDACTED
        if any(s in node for s in from_env):
            typed = isinstance(raw_node, str) and "${" in raw_node
            return _typed_public(raw_node) if typed else REDACTED
        return node

    redacted = redact(raw, resolved)
    # Only values long enough to be secrets: "1" or "" would hide every value holding it.
    secrets = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
    from_env = {s for s in from_env if len(s) >= MIN_SECRET_LENGTH}
    return redact_copies(raw, redacted)


def redacted_override(override: str) -> str:
    """A command-line override with its value shown as '***' when its key names a secret.

    `+data.token=abc` becomes `+data.token=***`, and a URL's password is '***'
    (`logger.tracking_uri=http://u:***@host`); other overrides stay as they are.
    """
    key, sep, _ = override.partition("=")
    name = key.lstrip("+~").rsplit(".", 1)[-1]
    return f"{key}{sep}{REDACTED}" if sep and SECRET_KEY.search(name) else public_uri(override)


def redacted_overrides(overrides: Any) -> list[str]:
    """Command-line overrides as text, each as `redacted_override` shows it."""
    return [redacted_override(str(override)) for override in overrides]


def public_uri(uri: str) -> str:
    """A URI as it may be shown and logged: a password in it as '***'.

    Both forms: `http://u:pw@host` and a query parameter (`...?user=u&password=pw`).
    """
    return _hidden_passwords(uri)


def _hidden_passwords(text: str, keep: Callable[[str], bool] = lambda password: False) -> str:
    """`text` with each password in it as '***', except those `keep` says to keep."""

    def hide(match: re.Match) -> str:
        before, password, after = match.groups()
        return match.group(0) if keep(password) else f"{before}***{after}"

    for pattern in _PASSWORDS:
        text = pattern.sub(hide, text)
    return text


def _typed_public(text: str) -> str:
    """`public_uri` of a value as typed: a literal password hidden, interpolations whole.

    `http://${oc.env:U}:pw@host` -> `http://${oc.env:U}:***@host`. A password given as an
    interpolation (`${oc.env:P}`) names a variable, not its value, and is kept: the text
    must still resolve, and an interpolation cut in half does not parse.
    """
    held: list[str] = []

    def hold(match: re.Match) -> str:  # each interpolation, as a stand-in without : / @
        held.append(match.group(0))
        return f"\0{len(held) - 1}\0"

    masked = text
    while (inner := _INTERPOLATION.sub(hold, masked)) != masked:  # nested: inside out
        masked = inner

    # A password given as a variable (its stand-ins only) names it, and is kept.
    masked = _hidden_passwords(masked, keep=lambda password: bool(_HELD.fullmatch(password)))
    while (restored := _STAND_IN.sub(lambda m: held[int(m.group(1))], masked)) != masked:
        masked = restored
    return masked


class PasswordFilter(logging.Filter):
    """Shows URL passwords in log lines as '***' (conf/train.yaml puts it on every handler).

    run.log is uploaded to the tracking server, and library messages (an MLflow error
    that quotes the store's URI) carry the URI as it was given.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrites the record's message when it holds a password; keeps every record."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it, as without a filter
            return True
        public = public_uri(message)
        if public != message:
            record.msg, record.args = public, None
        return True
