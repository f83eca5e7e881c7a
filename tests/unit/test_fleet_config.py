"""The ``[fleet]`` table: defaults, one-line errors, and ``certman status --fleet`` without it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_config_support import (
    TEST_PROVIDER,
    assert_config_error,
    install_test_provider,
    write_toml,
)

from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import FleetConfig
from certman.errors import ConfigError

BASE = f"""
    [certman]
    state_dir = "@TMP@/state"

    [dns.main]
    type = "{TEST_PROVIDER}"

    [certificates.mx]
    domains = ["mx.example.org"]
"""


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    install_test_provider(tmp_path, monkeypatch)
    return tmp_path


def test_a_config_without_fleet_has_none(tmp: Path) -> None:
    assert load(write_toml(tmp / "c.toml", BASE, tmp)).fleet is None


def test_fleet_defaults(tmp: Path) -> None:
    text = BASE + '\n    [fleet]\n    bucket = "b-fleet"\n    key_file = "@TMP@/fleet.key"\n'
    fleet = load(write_toml(tmp / "c.toml", text, tmp)).fleet
    assert fleet == FleetConfig(
        bucket="b-fleet",
        prefix="certman",
        region=None,
        endpoint_url=None,
        host=socket.gethostname().split(".")[0],
        lease_seconds=300.0,
        key_file=tmp / "fleet.key",
        silent_after=259200.0,
        check_interval=3600.0,
        lead=True,
    )


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ('key_file = "/k"', "fleet.bucket", "expected"),
        ('bucket = "b"', "fleet.key_file", "expected"),
        ('bucket = "b"\n    key_file = "/k"\n    host = "a b"', "fleet.host", "expected a name"),
        (
            'bucket = "b"\n    key_file = "/k"\n    endpoint_url = "ftp://x"',
            "fleet.endpoint_url",
            "URL",
        ),
        ('bucket = "b"\n    key_file = "/k"\n    lease_seconds = 1', "fleet.lease_seconds", "2"),
        ('bucket = "b"\n    key_file = "/k"\n    leader = true', "fleet", "leader"),
    ],
)
def test_a_bad_fleet_table_is_a_one_line_config_error(
    tmp: Path, extra: str, key: str, fragment: str
) -> None:
    path = write_toml(tmp / "c.toml", BASE + f"\n    [fleet]\n    {extra}\n", tmp)
    with pytest.raises(ConfigError) as error:
        load(path)
    if key == "fleet":  # an unknown key is reported by the table's finish()
        assert "leader" in str(error.value) and error.value.exit_code == 2
        return
    assert_config_error(error, path, key, fragment)


def test_status_fleet_without_a_fleet_table_is_a_config_error(
    tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_toml(tmp / "c.toml", BASE, tmp)
    assert main(["--config", str(path), "status", "--fleet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no [fleet] table" in err
