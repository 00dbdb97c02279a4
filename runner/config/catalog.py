"""The config groups of conf/, their options and one line about each.

An option's line is the first sentence of the comment at the top of its YAML file (or
its `_target_` when it has none). Files whose name starts with "_" hold blocks that the
options of their group share (`conf/aug/_shared.yaml`); they are not options. The README's
config list (scripts/gen_config_docs.py) and `python run.py --help` both come from here.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
MAX_DESCRIPTION = 110


def groups(conf: Path = CONF) -> dict[str, list[Path]]:
    """Group name (a folder under conf/, e.g. "model" or "hydra/launcher") -> option files."""
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        if path.parent != conf and not path.name.startswith("_"):
            found.setdefault(path.parent.relative_to(conf).as_posix(), []).append(path)
    return found


def defaults(conf: Path = CONF) -> dict[str, str | None]:
    """The option each group gets in conf/train.yaml's defaults list (None = unset)."""
    chosen: dict[str, str | None] = {}
    for entry in OmegaConf.load(conf / "train.yaml").get("defaults", []):
        if isinstance(entry, str) or not OmegaConf.is_dict(entry):
            continue
        for key, value in entry.items():
            chosen[str(key).removeprefix("override ")] = value
    return chosen


def describe(path: Path) -> str:
    """The first sentence of the file's leading comment, else its `_target_`."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text:
            break
        lines.append(text)
    text = " ".join(lines)
    if text:
        # The first sentence: up to a ";" or a "." that ends a word other than "al".
        match = re.match(r"(.+?)(;|(?<!\bal)(?<!\.)\.(?!\.))(\s|$)", text)
        text = match.group(1) if match else text.rstrip(".")
        if len(text) > MAX_DESCRIPTION:
            text = text[:MAX_DESCRIPTION].rsplit(" ", 1)[0] + " ..."
        return text
    target = OmegaConf.load(path).get("_target_")
    return f"`{target}`" if target else ""


def help_listing(conf: Path = CONF) -> str:
    """Every group with its options and their lines, for `python run.py --help`."""
    chosen = defaults(conf)
    out = []
    for group, files in groups(conf).items():
        default = chosen.get(group)
        # The sampler and pruner are the Optuna sweeper's, chosen only with it.
        applies = ", with hparams_search=optuna" if group.startswith("hydra/sweeper/") else ""
        out.append(f"{group} (default: {default or 'none'}{applies})")
        out.extend(f"  {p.stem:<16} {describe(p)}" for p in files)
    # Hydra's help template treats "$" as a placeholder.
    return "\n".join(out).replace("$", "$$")
