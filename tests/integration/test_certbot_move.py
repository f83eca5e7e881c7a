"""Moving a host from certbot to certman with real certbot: Postfix reads certbot's live/ files
(certbot certonly, no hook), a TLSA record of certbot's key is published. `run` and `check` say
the target belongs to certbot; `certman adopt --from-certbot` adopts the key, publishes current +
next, switches Postfix to certman's own files after a verified install, and a DANE prober on the
port sees no failure at any moment of the switch."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Prober, write_config
from test_certbot_hook import TLSA_NAME, certbot_for, rfc2136, served
from testbed import Testbed

from certman.cli.main import main
from certman.config.schema import PostfixConfig
from certman.dns.provider import RRset
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration


def test_a_certbot_host_moves_to_certman_with_no_failed_dane_probe(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    config = write_config(testbed, tmp_path / "certman")
    certbot = certbot_for(testbed, config, tmp_path / "certbot")
    issued = certbot.certonly(hook=False)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    live = certbot.live
    postfix.set({"smtpd_tls_chain_files": f"{live}/privkey.pem, {live}/fullchain.pem"})
    postfix.reload()
    dns = rfc2136(testbed)
    dns.replace(RRset.of(TLSA_NAME, "TLSA", 3, [f"3 1 1 {certbot.key_spki()}"]))
    testbed.unbound_control("flush_zone", "dane.test")
    key, serial = certbot.key_spki(), certbot.serial()
    assert served(testbed) == (key, serial)
    capsys.readouterr()
    prober = Prober(testbed, "mx1.dane.test", pf.address)
    try:
        with prober.running():
            assert main(["--config", str(config), "run", "--max-wait", "0"]) == 0
            out, err = capsys.readouterr()
            assert f"belongs to certbot's lineage {live}" in out, out
            assert f"certman adopt --from-certbot {live}" in err, err
            assert main(["--config", str(config), "check", "--no-postfix"]) != 0
            out = capsys.readouterr().out
            assert "certbot" in out and str(live) in out, out

            assert main(["--config", str(config), "adopt", "--from-certbot", str(live)]) == 0
            out = capsys.readouterr().out
            assert "certbot delete --cert-name mx1" in out, out
            assert served(testbed) == (key, serial)  # the same key and certificate throughout
        chain_files = postfix.get("smtpd_tls_chain_files")["smtpd_tls_chain_files"]
        assert str(live) not in chain_files
        assert chain_files == str(tmp_path / "certman" / "postfix-files" / "mx1-ecdsa-p256.pem")
        assert main(["--config", str(config), "check", "--no-postfix"]) == 0, (
            capsys.readouterr().out
        )
        assert main(["--config", str(config), "run"]) == 0
        assert "certbot" not in capsys.readouterr().err  # no warning once certman's files serve
        records = dns.read(TLSA_NAME, "TLSA")
        assert records is not None and len(records.rdatas) == 2  # current + next
        assert f"3 1 1 {key}" in records.rdatas
        assert len(prober.results) >= 10
        assert prober.failures == [], prober.failures[:3]
    finally:
        dns.delete(TLSA_NAME, "TLSA")
