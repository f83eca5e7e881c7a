"""Helpers shared by the configuration tests (this module holds no tests itself).

``install_test_provider`` registers a tiny DNS provider type, ``certman-test``, through the real
entry-point group ``certman.dns_providers`` (a ``*.dist-info`` directory on ``sys.path``), so the
config tests exercise third-party provider discovery and do not depend on the built-in providers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from certman.errors import ConfigError

TEST_PROVIDER = "certman-test"

_PROVIDER_MODULE = """
from dataclasses import dataclass


@dataclass(frozen=True)
class FakeOptions:
    zone: object
    token: object


class FakeProvider:
    type_name = "certman-test"

    @classmethod
    def parse_options(cls, section):
        return FakeOptions(section.opt_string("zone"), section.secret("token", required=False))
"""


def install_test_provider(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make provider type ``certman-test`` loadable via entry points for this test."""
    (directory / "certman_fakeprovider.py").write_text(_PROVIDER_MODULE)
    dist = directory / "certman_fakeprovider-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: certman-fakeprovider\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[certman.dns_providers]\n{TEST_PROVIDER} = certman_fakeprovider:FakeProvider\n"
    )
    monkeypatch.syspath_prepend(str(directory))


def fake_options(zone: str | None = None, token: object = None) -> object:
    """An options object equal to what ``certman-test`` parses (for whole-Config equality)."""
    import certman_fakeprovider  # type: ignore[import-not-found]

    options: object = certman_fakeprovider.FakeOptions(zone, token)
    return options


def write_toml(path: Path, text: str, tmp: Path) -> Path:
    """Write ``text`` (dedented; ``@TMP@`` replaced by ``tmp``) to ``path``."""
    path.write_text(textwrap.dedent(text).replace("@TMP@", str(tmp)), encoding="utf-8")
    return path


def assert_config_error(
    error: pytest.ExceptionInfo[ConfigError], path: Path, key: str | None, *fragments: str
) -> str:
    """One line, ``<file>: <key path>: ...`` with every fragment, and exit code 2."""
    message = str(error.value)
    assert "\n" not in message, message
    prefix = f"{path}: {key}: " if key is not None else f"{path}: "
    assert message.startswith(prefix), f"{message!r} does not start with {prefix!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert error.value.exit_code == 2
    return message
