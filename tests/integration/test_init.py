"""``certman init`` on the testbed: it reads what Postfix serves (main.cf and a master.cf
service override), the existing TLSA RRset and the zone's primary, and writes a configuration
that ``config check`` accepts and with which ``run`` completes. It never overwrites a file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from test_provider_contract import build
from testbed import Testbed

from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import PostfixConfig
from certman.dns.provider import RRset
from certman.dns.providers.rfc2136 import Rfc2136Provider
from certman.lifecycle.state import Phase
from certman.lifecycle.statefile import CertDir
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration


def test_init_writes_a_config_that_matches_the_host_and_runs(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    postfix.set({"smtpd_tls_chain_files": str(pf.initial_chain_file)})
    postfix.set_service("submission/inet", {"smtpd_tls_chain_files": str(pf.initial_chain_file)})
    postfix.reload()
    # The TLSA record the host already publishes, with its TTL (init keeps it: never 300 blindly).
    options = {"server": testbed.bind.primary, "tsig_key_file": str(testbed.bind.tsig.file)}
    dns = build(Rfc2136Provider, "bind", options)
    dns.replace(RRset.of("_25._tcp.mx1.dane.test", "TLSA", 3, [pf.initial_tlsa]))
    dns.delete("_587._tcp.mx1.dane.test", "TLSA")
    testbed.unbound_control("flush_zone", "dane.test")
    output = tmp_path / "certman.toml"
    argv = [
        "init", str(output), "--postfix-config-dir", str(pf.config_dir),
        "--resolver", testbed.resolver, "--acme-directory", testbed.pebble.directory,
        "--email", "postmaster@dane.test", "--ca-bundle", str(testbed.pebble.api_ca),
        "--tsig-key-file", str(testbed.bind.tsig.file),
        "--state-dir", str(tmp_path / "state"), "--directory", str(tmp_path / "files"),
    ]  # fmt: skip
    try:
        assert main(argv) == 0
        text = output.read_text()
        data = tomllib.loads(text)
        certs = data["certificates"]
        assert certs["mx1"]["postfix"]["targets"] == ["main.cf"]
        assert certs["mx1"]["domains"] == ["mx1.dane.test"]
        assert certs["mx1"]["dane"]["ttl"] == 3  # the existing RRset's TTL
        assert certs["submission"]["postfix"]["targets"] == ["submission/inet"]
        assert certs["submission"]["dane"]["ports"] == [587]
        assert data["dns"]["main"]["server"] == testbed.bind.primary  # the zone's SOA MNAME
        assert 'layout = "chain-files"' in text
        # Never overwrites.
        assert main(argv) == 1
        assert output.read_text() == text
        assert "never overwrites" in capsys.readouterr().err

        # Keep the test short: no RRset at _587 yet (init leaves ttl commented), and a 1 s
        # margin instead of the default 60 s after 2 x TTL.
        edited = text.replace("#ttl = 300", "ttl = 3").replace("ttl = 3\n", "ttl = 3\nmargin = 1\n")
        output.write_text(edited)
        assert main(["--config", str(output), "config", "check"]) == 0
        assert main(["--config", str(output), "run", "--max-wait", "120"]) == 0
        cfg = load(output)
        for name in ("mx1", "submission"):
            state = CertDir.of(cfg.state_dir, name).load(name)
            assert state.phase is Phase.STEADY, name
    finally:
        dns.delete("_25._tcp.mx1.dane.test", "TLSA")
        dns.delete("_587._tcp.mx1.dane.test", "TLSA")
