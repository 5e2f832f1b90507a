"""From a YAML preset plus overrides to a validated config, with one readable line per refused field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from lib.core.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_preset(path: Path) -> dict[str, Any]:
    """Read a YAML (or JSON) preset into a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--config {path}: no such file; pass a YAML preset such as deployments/presets/notebook.yaml"
        )
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping of sections at the top level, got {type(loaded).__name__}"
        )
    return loaded


def load_config(
    config_class: type[ConfigT], preset: Path | None = None, overrides: dict[str, Any] | None = None
) -> ConfigT:
    """Build a config from an optional preset plus overrides; errors name the parameter."""
    raw = read_preset(preset) if preset is not None else {}
    raw = deep_merge(raw, overrides or {})
    try:
        return config_class.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source=str(preset) if preset else "arguments")) from error


# pydantic names the member of a union that refused a value in the error's location ('constrained-int',
# "literal['auto']", 'int', ...); field names here are plain identifiers, so these tell them apart.
_UNION_MEMBER = re.compile(r"[\[\]'-]|^(int|float|str|bool|none|list|dict)$")


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per field: the refusals of a union's members (e.g. an int >= 0 or 'auto') are joined with 'or'."""
    fields: dict[str, tuple[list[str], str]] = {}
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"] if not _UNION_MEMBER.search(str(part))) or "(top level)"
        found = f" (got {item['input']!r})" if "input" in item and not isinstance(item["input"], dict) else ""
        messages, _ = fields.setdefault(where, ([], found))
        messages.append(item["msg"])
    lines = [f"invalid configuration ({source}):"]
    lines += [f"  - {where}: {', or '.join(messages)}{found}" for where, (messages, found) in fields.items()]
    return "\n".join(lines)
