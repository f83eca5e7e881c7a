"""docs/configuration.md stays true: every key the reader accepts is documented, with its default,
and every documented key is one the reader accepts.

The keys come from the reader itself, not from a list kept beside it: each configuration below is
parsed with ``Section.finish`` recording, per table, the keys the reader asked for (its valid keys)
and the default it used for each. Together the configurations reach every table and key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_config_render import (  # secrets_env: the fixture, shared
    HTTP_ONLY,
    POWERDNS_EXEC_ROUTE53,
    RFC2136_ENV,
    example,
    secrets_env,  # noqa: F401
    write_config,
)

from certman.config import toml
from certman.config.load import load_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
HEADING = re.compile(r"^## \[\[?(?P<table>[^\]]+)\]\]?(?:\s+type\s*=\s*\"(?P<type>[^\"]+)\")?")
# A dotted key path: bare keys or quoted ones (``certificates."mx.example".dane``), list indexes.
PART = re.compile(r'"(?:[^"\\]|\\.)*"|[^."\[]+')
PLACEHOLDER = {"certificates.NAME.zones": '"ZONE"'}  # a table whose keys are the user's own
ROW = re.compile(r"^\|\s*`(?P<key>[^`]+)`\s*\|[^|]*\|\s*(?P<default>[^|]*?)\s*\|")

Keys = dict[str, dict[str, object]]  # table -> key -> default the reader used (None: none)


def _table_name(prefix: str, provider_types: dict[str, str]) -> str:
    """``certificates.mx1.dane`` -> ``certificates.NAME.dane``; ``dns.x`` -> ``dns.NAME TYPE``."""
    parts = PART.findall(re.sub(r"\[\d+\]$", "", prefix)) or [""]
    if parts[0] == "certificates" and len(parts) > 1:
        parts[1] = "NAME"
    if parts[0] == "dns" and len(parts) == 2:
        return f"dns.NAME {provider_types[prefix]}"
    return ".".join(parts)


def _recorded(configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> Keys:
    seen: list[tuple[str, set[str], dict[str, object]]] = []
    defaults: dict[toml.Section, dict[str, object]] = {}  # keeps each Section alive: no id reuse
    types: dict[str, str] = {}
    original_get, original_finish = toml.Section._get, toml.Section.finish

    def get(self: toml.Section, key: str, default: object, *args: object) -> object:
        value = original_get(self, key, default, *args)  # type: ignore[arg-type]
        if default is not toml.REQUIRED:
            defaults.setdefault(self, {})[key] = default
        if key == "type" and self.prefix.startswith("dns."):
            types[self.prefix] = str(value)
        return value

    def finish(self: toml.Section) -> None:
        seen.append((self.prefix, set(self._seen), defaults.get(self, {})))
        original_finish(self)

    monkeypatch.setattr(toml.Section, "_get", get)
    monkeypatch.setattr(toml.Section, "finish", finish)
    for config in configs:
        load_config(config)
    keys: Keys = {}
    for prefix, names, used in seen:
        table = keys.setdefault(_table_name(prefix, types), {})
        for name in names:
            table.setdefault(name, used.get(name))
    return keys


def _documented() -> Iterator[tuple[str, str, str]]:
    table = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if heading := HEADING.match(line):
            table = heading["table"] + (f" {heading['type']}" if heading["type"] else "")
        elif line.startswith("## "):
            table = None
        elif table and (row := ROW.match(line)):
            yield table, row["key"], row["default"]


@pytest.fixture
def reader_keys(secrets_env: Path, monkeypatch: pytest.MonkeyPatch) -> Keys:  # noqa: F811
    (secrets_env / "plain").mkdir()
    (secrets_env / "all").mkdir()
    configs = [
        example(secrets_env / "plain", everything=False),
        example(secrets_env / "all", everything=True),
    ]
    for name, text in (("env", RFC2136_ENV), ("more", POWERDNS_EXEC_ROUTE53), ("http", HTTP_ONLY)):
        (secrets_env / name).mkdir()
        (secrets_env / name / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        (secrets_env / name / "postfix-out").mkdir()
        configs.append(write_config(secrets_env / name, text))
    return _recorded(configs, monkeypatch)


def _is_table(table: str, key: str, keys: Keys) -> bool:
    sub = f"{table}.{key}"
    return any(t == sub or t.startswith(f"{sub} ") or t.startswith(f"{table}.NAME") for t in keys)


def test_every_key_the_reader_accepts_is_documented_with_its_default(reader_keys: Keys) -> None:
    documented: dict[str, dict[str, str]] = {}
    for table, key, shown in _documented():
        documented.setdefault(table, {})[key] = shown
    missing: list[str] = []
    wrong_default: list[str] = []
    for table, keys in sorted(reader_keys.items()):
        if table == "" or table in PLACEHOLDER:
            continue  # the root holds only tables; zone names are the user's own
        for key, default in sorted(keys.items()):
            if _is_table(table, key, reader_keys):
                continue
            # ``type`` is documented once, for every provider, under [dns.NAME].
            where = "dns.NAME" if table.startswith("dns.NAME ") and key == "type" else table
            if key not in documented.get(where, {}):
                missing.append(f"[{where}] {key}")
            elif default is not None and not isinstance(default, list | tuple):
                shown = documented[where][key].strip("`")
                if shown.lower() not in (str(default).lower(), f'"{default}"'.lower()):
                    wrong_default.append(f"[{where}] {key}: docs {shown!r}, reader {default!r}")
    assert missing == [], f"keys not in docs/configuration.md: {missing}"
    assert wrong_default == []


def test_every_documented_key_is_one_the_reader_accepts(reader_keys: Keys) -> None:
    accepted = {table: set(keys) for table, keys in reader_keys.items()}
    accepted["dns.NAME"] = {"type"}
    for table, placeholder in PLACEHOLDER.items():
        accepted[table] = {placeholder}
    unknown = [
        f"[{table}] {key}"
        for table, key, _ in _documented()
        if key not in accepted.get(table, set())
    ]
    assert unknown == [], f"documented but not accepted: {unknown}"
