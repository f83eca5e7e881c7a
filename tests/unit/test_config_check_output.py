"""`certman config check` prints the effective config and never a secret's value."""

from __future__ import annotations

from pathlib import Path

import pytest

from certman.cli.main import main

SECRETS = ("SUPERSECRETVALUE12345678==", "EABSECRETXYZ", "PDNSSECRETXYZ")


def test_config_check_shows_where_secrets_come_from_but_not_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tsig = tmp_path / "tsig.key"
    tsig.write_text(
        f'key "certman-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRETS[0]}";\n}};\n'
    )
    monkeypatch.setenv("EABKEY", SECRETS[1])
    monkeypatch.setenv("PDNSKEY", SECRETS[2])
    config = tmp_path / "certman.toml"
    config.write_text(
        f"""
[acme.eab]
kid = "kid1"
hmac_key_env = "EABKEY"
[dns.bind]
type = "rfc2136"
server = "192.0.2.53"
tsig_key_file = "{tsig}"
[dns.pdns]
type = "powerdns"
api_url = "http://127.0.0.1:8081"
api_key_env = "PDNSKEY"
[certificates.mx1]
domains = ["mx1.example.org"]
dns_provider = "bind"
"""
    )
    assert main(["--config", str(config), "config", "check"]) == 0
    out = capsys.readouterr().out
    for secret in SECRETS:
        assert secret not in out
    assert "providers.bind.options.server = '192.0.2.53'" in out
    assert "providers.bind.options.tsig.name = 'certman-key'" in out
    assert "providers.bind.options.tsig.secret = <redacted>" in out
    assert "providers.pdns.options.api_key = <redacted>" in out
    assert "acme.eab.hmac_key = <secret from env:EABKEY>" in out
    assert f"{config}: OK" in out
