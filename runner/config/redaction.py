"""Secrets never leave the process in the clear: params, tags and saved files show ***."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys whose values are never logged or saved in the clear.
SECRET_KEY = re.compile(
    r"(^|_)(token|password|passwd|secret|api_?key|access_?key|secret_?key|private_?key"
    r"|credentials?)$",
    re.IGNORECASE,
)
REDACTED = "***"
# `scheme://user:password@`: the password, up to the last "@" before the host.
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")


def redacted_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers, with secrets replaced by '***'.

    Redacts values of keys that name a secret (token, password, api_key, ...), any
    value taken from the environment with `${oc.env:...}`, and the password of a URL
    (`logger.tracking_uri=http://user:password@host`).
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def redact(raw_node: Any, node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: REDACTED
                if SECRET_KEY.search(str(key)) and node[key] is not None
                else redact(raw_node.get(key) if isinstance(raw_node, dict) else None, node[key])
                for key in node
            }
        if isinstance(node, list):
            raws = raw_node if isinstance(raw_node, list) else [None] * len(node)
            return [redact(r, n) for r, n in zip(raws, node, strict=False)]
        if isinstance(raw_node, str) and "oc.env" in raw_node:
            return REDACTED
        return public_uri(node) if isinstance(node, str) else node

    return redact(raw, resolved)


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
    """A URI as it may be shown and logged: a password in it (`http://u:pw@host`) as '***'."""
    return _URL_PASSWORD.sub(r"\1:***@", uri)
