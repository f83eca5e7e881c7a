"""``certman preflight`` on the testbed: read-only, one line per finding; each broken setup
below fails exactly its own check (exit 1) and a good one passes (exit 0), changing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_config
from testbed import Testbed

from certman.cli.main import main
from certman.config.load import load_config as load
from certman.dns.provider import ProviderContext, create_provider

pytestmark = pytest.mark.integration


def preflight(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["--config", str(config), "preflight"])
    lines = capsys.readouterr().out.splitlines()
    return code, [line.strip() for line in lines if line.strip().startswith("FAIL")]


def serial(bed: Testbed, config: Path, zone: str = "dane.test") -> str:
    spec = load(config).providers["bind"]
    dns = create_provider(spec.type, "bind", spec.options, ProviderContext((bed.resolver,)))
    rrset = dns.read(zone, "SOA")
    assert rrset is not None
    return next(iter(rrset.rdatas)).split()[2]


def test_a_ready_host_passes_and_the_update_proof_changes_nothing(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(testbed, tmp_path)
    before = serial(testbed, config)
    code, failures = preflight(config, capsys)
    assert (code, failures) == (0, [])
    assert serial(testbed, config) == before


def test_a_resolver_that_does_not_validate(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(testbed, tmp_path)
    # BIND's primary answers for its zones with signatures, but validates nothing (no AD).
    config.write_text(config.read_text().replace(testbed.resolver, testbed.bind.primary, 1))
    code, failures = preflight(config, capsys)
    assert code == 1
    assert len(failures) == 1 and "does not validate" in failures[0], failures


def test_an_unsigned_zone(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(testbed, tmp_path, zone="plain.test", domains=["mx1.dane.test"],
                          dane_hosts=["mx1.plain.test"])  # fmt: skip
    code, failures = preflight(config, capsys)
    assert code == 1
    assert len(failures) == 1 and "zone plain.test is not DNSSEC-signed" in failures[0], failures


def test_a_tsig_key_that_may_not_change_the_name(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(testbed, tmp_path)
    limited = testbed.bind.tsig.file.with_name("limited-key.key")
    config.write_text(config.read_text().replace(str(testbed.bind.tsig.file), str(limited)))
    code, failures = preflight(config, capsys)
    assert code == 1
    assert len(failures) == 1 and "REFUSED" in failures[0], failures
    assert "_25._tcp.mx1.dane.test" in failures[0]


def test_the_ca_down(testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(testbed, tmp_path)
    down = testbed.pebble.directory.replace(":14000", ":14999")  # nothing listens there
    config.write_text(config.read_text().replace(testbed.pebble.directory, down))
    code, failures = preflight(config, capsys)
    assert code == 1
    assert len(failures) == 1 and f"ACME directory {down}" in failures[0], failures


def test_a_closed_port(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(testbed, tmp_path)
    address = testbed.postfix["mx1"].address
    config.write_text(
        config.read_text().replace(f'probe_address = "{address}"', 'probe_address = "127.0.0.99"')
    )
    code, failures = preflight(config, capsys)
    assert code == 1
    assert len(failures) == 1 and "127.0.0.99:25: no TLS" in failures[0], failures


def test_run_dry_run_starts_with_the_preflight_and_changes_nothing(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(testbed, tmp_path)
    assert main(["--config", str(config), "run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "preflight: OK" in out and "mx1: would" in out
    assert not (tmp_path / "state" / "mx1").exists()
