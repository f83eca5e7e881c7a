"""Typed, strict reading of one TOML table, with errors that name the file and the key path.

Every getter records the key it consumed; ``finish()`` rejects whatever is left over and suggests
the nearest valid key. Providers from other packages use the same reader for their own options.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from certman.errors import ConfigError

E = TypeVar("E", bound=StrEnum)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_UNDERSCORE_LABEL = re.compile(r"^_[a-z0-9-]{1,62}$")
# A bare TOML key, optionally followed by list indexes we add ourselves (``domains[0]``).
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\[\d+\])*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Missing()


@dataclass(frozen=True)
class Secret:
    """A secret read from a file or an environment variable; never printed.

    ``source`` says where it came from (``file:/etc/certman/tsig.key`` or ``env:NAME``) and is
    what ``certman config check`` shows; the value itself stays out of every repr and log.
    """

    source: str
    value: str = field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"<secret from {self.source}>"


def _type_name(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def normalize_domain(name: str, *, wildcard: bool = False, underscore: bool = False) -> str | None:
    """Lower-case ``name`` without its trailing dot, or None when it is not a valid host name.

    Labels follow RFC 1123 (letters, digits, inner hyphens, at most 63 octets, 253 in all); a
    leading ``*.`` is allowed when ``wildcard``; ``_``-labels (``_25._tcp``) when ``underscore``.
    """
    name = name.strip().lower().removesuffix(".")
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if wildcard and labels[0] == "*":
        labels = labels[1:]
    if len(labels) < 2:
        return None
    for label in labels:
        ok = _LABEL.match(label) or (underscore and _UNDERSCORE_LABEL.match(label))
        if not ok:
            return None
    return name


class Section:
    """One TOML table at ``path`` (dotted) inside ``file``."""

    def __init__(self, file: Path, path: str, data: Mapping[str, object]) -> None:
        self.file = file
        self.prefix = path
        self._data = data
        self._seen: set[str] = set()

    # -- errors ---------------------------------------------------------------------------------

    def key_path(self, key: str) -> str:
        """``prefix.key``; a key that is not a bare TOML key is quoted (``zones."example.org"``)."""
        if not _BARE_KEY.match(key):
            key = json.dumps(key, ensure_ascii=False)  # escapes quotes and control characters
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.key_path(key)}: {message}")

    def finish(self) -> None:
        """Reject keys nobody asked for, suggesting the closest known one."""
        for key in self._data:
            if key in self._seen:
                continue
            close = difflib.get_close_matches(key, sorted(self._seen), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(self._seen)) or "none"
            raise self.error(key, f"unknown key{hint}; valid keys here: {known}")

    # -- raw access -----------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._data)

    def raw(self, key: str) -> object:
        """The value at ``key`` as TOML gave it (for union-typed keys); marks it consumed."""
        self._seen.add(key)
        return self._data.get(key)

    def has(self, key: str) -> bool:
        self._seen.add(key)
        return key in self._data

    def _get(self, key: str, default: object, kinds: tuple[type, ...], expected: str) -> object:
        self._seen.add(key)
        if key not in self._data:
            if default is REQUIRED:
                raise self.error(key, f"missing required key, expected {expected}")
            return default
        value = self._data[key]
        # bool is an int subclass in Python; TOML keeps them apart, so do we.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {expected}, got {_type_name(value)}")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {expected}, got {_type_name(value)}")
        return value

    # -- typed getters --------------------------------------------------------------------------

    def string(self, key: str, default: object = REQUIRED, *, nonempty: bool = True) -> str:
        value = self._get(key, default, (str,), "a string")
        if isinstance(value, str) and nonempty and not value.strip() and key in self._data:
            raise self.error(key, "expected a non-empty string")
        return value  # type: ignore[return-value]

    def opt_string(self, key: str) -> str | None:
        value = self._get(key, None, (str,), "a string")
        if isinstance(value, str) and not value.strip():
            raise self.error(key, "expected a non-empty string")
        return value if isinstance(value, str) else None

    def integer(
        self,
        key: str,
        default: object = REQUIRED,
        *,
        low: int | None = None,
        high: int | None = None,
    ) -> int:
        value = self._get(key, default, (int,), "an integer")
        if isinstance(value, int):
            self._check_range(key, value, low, high)
        return value  # type: ignore[return-value]

    def opt_integer(
        self, key: str, *, low: int | None = None, high: int | None = None
    ) -> int | None:
        value = self._get(key, None, (int,), "an integer")
        if isinstance(value, int):
            self._check_range(key, value, low, high)
        return value if isinstance(value, int) else None

    def number(
        self,
        key: str,
        default: object = REQUIRED,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> float:
        value = self._get(key, default, (int, float), "a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        if isinstance(value, float) and value == 0 and math.copysign(1.0, value) < 0:
            raise self.error(key, "expected a number, got -0.0 (negative zero)")
        if isinstance(value, int | float):
            self._check_range(key, value, low, high)
            return float(value)
        return value  # type: ignore[return-value]

    def boolean(self, key: str, default: object = REQUIRED) -> bool:
        return self._get(key, default, (bool,), "true or false")  # type: ignore[return-value]

    def _check_range(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise self.error(key, f"expected a value >= {low}, got {value}")
        if high is not None and value > high:
            raise self.error(key, f"expected a value <= {high}, got {value}")

    def str_list(self, key: str, default: object = REQUIRED, *, nonempty: bool = True) -> list[str]:
        value = self._get(key, default, (list,), "a list of strings")
        if not isinstance(value, list):
            return value  # type: ignore[return-value]
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.error(
                    f"{key}[{index}]", f"expected a non-empty string, got {_type_name(item)}"
                )
        if nonempty and not value and key in self._data:
            raise self.error(key, "expected a non-empty list")
        return list(value)

    def int_list(self, key: str, default: object = REQUIRED, *, low: int, high: int) -> list[int]:
        value = self._get(key, default, (list,), "a list of integers")
        if not isinstance(value, list):
            return value  # type: ignore[return-value]
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.error(f"{key}[{index}]", f"expected an integer, got {_type_name(item)}")
            self._check_range(f"{key}[{index}]", item, low, high)
        if not value:
            raise self.error(key, "expected a non-empty list")
        return list(value)

    def choice(self, key: str, enum: type[E], default: object = REQUIRED) -> E:
        options = ", ".join(member.value for member in enum)
        value = self._get(key, default, (str, enum), f"one of {options}")
        try:
            return enum(str(value))
        except ValueError:
            raise self.error(key, f"expected one of {options}, got {value!r}") from None

    def path(self, key: str, default: object = REQUIRED) -> Path:
        value = self._get(key, default, (str, Path), "an absolute path")
        if "\0" in str(value):
            raise self.error(key, f"expected a path, got one with a NUL byte: {str(value)!r}")
        path = Path(value)  # type: ignore[arg-type]
        if not path.is_absolute():
            raise self.error(key, f"expected an absolute path, got {str(value)!r}")
        return path

    def opt_path(self, key: str) -> Path | None:
        return self.path(key) if self.has(key) else None

    def domain(self, key: str, default: object = REQUIRED, *, wildcard: bool = False) -> str:
        value = self.string(key, default)
        return self._domain(key, value, wildcard)

    def domain_list(
        self, key: str, default: object = REQUIRED, *, wildcard: bool = False
    ) -> list[str]:
        values = self.str_list(key, default)
        return [self._domain(f"{key}[{i}]", v, wildcard) for i, v in enumerate(values)]

    def _domain(self, key: str, value: str, wildcard: bool) -> str:
        name = normalize_domain(value, wildcard=wildcard)
        if name is None:
            what = "a fully qualified domain name"
            if not wildcard and normalize_domain(value, wildcard=True) is not None:
                what = "a concrete host name (no wildcard)"
            raise self.error(key, f"expected {what}, got {value!r}")
        return name

    def secret(self, key: str, *, required: bool = True) -> Secret | None:
        """A secret given as ``<key>_file`` (a file holding it) or ``<key>_env`` (a variable).

        An inline ``<key>`` is refused: config files get copied, pasted and committed.
        """
        # Checked without marking ``key`` as valid, so finish() never suggests the inline form.
        if key in self._data:
            raise self.error(key, f"inline secrets are not accepted; use {key}_file or {key}_env")
        file_key, env_key = f"{key}_file", f"{key}_env"
        given = [k for k in (file_key, env_key) if self.has(k)]
        if len(given) > 1:
            raise self.error(file_key, f"give either {file_key} or {env_key}, not both")
        if not given:
            if required:
                raise self.error(
                    file_key, f"missing required key, expected {file_key} or {env_key}"
                )
            return None
        if given[0] == file_key:
            path = self.path(file_key)
            self._private_file(file_key, path)
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self.error(
                    file_key, f"cannot read secret file {path}: {exc.strerror or exc}"
                ) from None
            except UnicodeDecodeError:
                raise self.error(file_key, f"secret file {path} is not UTF-8 text") from None
            if not value:
                raise self.error(file_key, f"secret file {path} is empty")
            return Secret(f"file:{path}", value)
        name = self.string(env_key)
        if not _ENV_NAME.match(name):
            raise self.error(env_key, f"expected an environment variable name, got {name!r}")
        value = os.environ.get(name, "").strip()
        if not value:
            raise self.error(env_key, f"environment variable {name} is not set or empty")
        return Secret(f"env:{name}", value)

    def _private_file(self, key: str, path: Path) -> None:
        """A secret file no other user can read or change (a TSIG key signs zone updates)."""
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            return  # reported by the read that follows
        if mode & 0o066:
            raise self.error(
                key,
                f"secret file {path} is readable or writable by other users (mode {mode:04o}): "
                f"chmod 600 {path}",
            )

    # -- nesting --------------------------------------------------------------------------------

    def table(self, key: str, *, required: bool = False) -> Section | None:
        value = self._get(key, REQUIRED if required else None, (dict,), "a table")
        if value is None:
            return None
        return Section(self.file, self.key_path(key), value)  # type: ignore[arg-type]

    def subtable(self, key: str) -> Section:
        """The table at ``key``, or an empty one when absent (so defaults apply)."""
        return self.table(key) or Section(self.file, self.key_path(key), {})

    def tables(self, key: str) -> Iterator[tuple[str, Section]]:
        """The named sub-tables of ``key`` (``[certificates.NAME]``), in file order."""
        parent = self.subtable(key)
        for name in list(parent._data):
            yield name, parent.subtable(name)
        for name in parent._data:
            parent._seen.add(name)

    def table_list(self, key: str) -> list[Section]:
        """An array of tables (``[[dhparams.file]]``)."""
        value = self._get(key, [], (list,), "an array of tables")
        sections = []
        assert isinstance(value, list)
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{index}]", f"expected a table, got {_type_name(item)}")
            sections.append(Section(self.file, f"{self.key_path(key)}[{index}]", item))
        return sections
