"""YAML for configs and `key=value` overrides, with YAML 1.2 numbers.

PyYAML follows YAML 1.1, which reads `5e-6` or `1e3` (no dot) as strings; a config value like
`beta_max: 5e-6` or `--set train.lr=3e-4` must be a number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import EdvaeError


class _Loader(yaml.SafeLoader):
    pass


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text (safe tags only); `5e-6` is the float 5e-06."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe tags only


def load_yaml_file(path: Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty: {}); EdvaeError naming the `what` file if it is missing,
    not YAML or not a mapping."""
    if not path.is_file():
        raise EdvaeError(f"{what} file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EdvaeError(f"{what} file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise EdvaeError(f"{what} file {path} must hold a mapping")
    return data


def parse_value(raw: str) -> Any:
    """The value of one `key=value` override: YAML, or the raw text when it is not YAML."""
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        return raw
