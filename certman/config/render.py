"""The effective configuration as ``certman config check`` prints it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from certman.config.schema import Config, ProviderConfig
from certman.config.toml import Secret
from certman.plugins import BUILTIN_PROVIDERS


def _value(value: Any) -> str:
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):
        return str(value.value)
    return repr(value) if isinstance(value, str) else str(value)


def _walk(prefix: str, obj: Any) -> Iterator[str]:
    if isinstance(obj, ProviderConfig):
        # Built-in providers declare their secrets repr=False; options of a third-party provider
        # may not, so they are not shown at all.
        yield f"{prefix}.type = {obj.type!r}"
        if obj.type in BUILTIN_PROVIDERS:
            yield from _walk(f"{prefix}.options", obj.options)
        else:
            yield f"{prefix}.options = <not shown: options of a third-party provider>"
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type | Secret):
        for f in dataclasses.fields(obj):
            if f.name == "name" and getattr(obj, "name", None) == prefix.rsplit(".", 1)[-1]:
                continue  # already the last part of the key path
            key = f"{prefix}.{f.name}" if prefix else f.name
            if not f.repr:  # secrets are declared repr=False (TSIG secret, API key, ...)
                yield f"{key} = <redacted>"
                continue
            yield from _walk(key, getattr(obj, f.name))
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from _walk(f"{prefix}.{key}", item)
    else:
        yield f"{prefix} = {_value(obj)}"


def describe_config(cfg: Config) -> list[str]:
    """The effective configuration, defaults filled in; secrets show only where they come from."""
    lines = [f"# effective configuration from {cfg.path}"]
    for f in dataclasses.fields(cfg):
        if f.name != "path":
            lines.extend(_walk(f.name, getattr(cfg, f.name)))
    return lines
