"""Building a `LabrlConfig`: a YAML file (or a resumed run's saved config) plus dotted overrides.

`load_config(path, ["trainer.lr=1e-4"])` and `config_from_dict(saved, overrides)` are the only
ways configs are built (the CLI, `--resume`, tests and `ray job submit` entrypoints all use them),
so every caller gets the same one-line-per-field `ConfigError` instead of a pydantic traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import LabrlConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending field."""


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (1e-4, true, [1,2])."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    dotted, value_text = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
    node[keys[-1]] = yaml.safe_load(value_text)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(config)"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid config:\n" + "\n".join(lines)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> LabrlConfig:
    """Validate `raw` (a parsed YAML file or a run's saved config) after applying `overrides`."""
    for override in overrides or []:
        apply_override(raw, override)
    try:
        return LabrlConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LabrlConfig:
    """Read YAML (the default config when `path` is None), apply overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return config_from_dict(raw, overrides)
