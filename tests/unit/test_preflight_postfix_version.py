"""`certman preflight` on a Postfix older than the layout needs (issue 12): the testbed runs
Postfix 3.7 only, so a fake postconf reports mail_version 3.3. An SNI target
(tls_server_sni_maps) and the chain-files layout (smtpd_tls_chain_files) each need 3.4: one
FAIL line each, naming the setting at fault, the version found and the fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_postconf import FakePostfix

from certman.config.load import load_config
from certman.errors import PostfixError
from certman.integrations import preflight
from certman.integrations.preflight import Verdict
from certman.lifecycle.context import Context
from certman.postfix.commands import Postfix


def _config(tmp_path: Path, layout: str, targets: str) -> Path:
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir(exist_ok=True)
    path = tmp_path / "certman.toml"
    path.write_text(
        f"""
[certman]
state_dir = "{tmp_path / "state"}"

[acme]
directory = "https://ca.invalid/dir"
email = "postmaster@example.org"

[postfix]
config_dir = "{postfix_dir}"

[certificates.mail]
domains = ["mail.example.org"]
challenge = "http-01"

[certificates.mail.http]
webroot = "{tmp_path}"

[certificates.mail.postfix]
layout = "{layout}"
directory = "{tmp_path / "files"}"
targets = [{targets}]
"""
    )
    return path


def _findings(tmp_path: Path, version: str, layout: str, targets: str) -> list[str]:
    cfg = load_config(_config(tmp_path, layout, targets))
    fake = FakePostfix(cfg.postfix.config_dir, {"mail_version": version})
    ctx = Context(cfg, time.time, time.sleep, _postfix=Postfix(cfg.postfix, run=fake))
    found = preflight._postfix(ctx, cfg.certificates["mail"])
    return [f.line() for f in found if f.verdict is Verdict.FAIL and "Postfix 3.4" in f.text]


@pytest.fixture(autouse=True)
def _no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port probe is not under test here (test_preflight.py has it on the testbed)."""

    def closed(*args: object, **kwargs: object) -> object:
        raise PostfixError("closed")

    monkeypatch.setattr("certman.dane.probe.fetch_chain", closed)


def test_an_sni_target_on_postfix_3_3_fails_naming_the_target_version_and_fix(
    tmp_path: Path,
) -> None:
    lines = _findings(tmp_path, "3.3.2", "key-cert", '"main.cf", "sni:mail.example.org"')
    assert len(lines) == 1, lines
    assert "FAIL" in lines[0] and "\n" not in lines[0]
    assert "certificates.mail.postfix.targets: sni:mail.example.org needs Postfix 3.4" in lines[0]
    assert "runs Postfix 3.3.2" in lines[0]
    assert "fix: serve the name from a main.cf or master.cf target" in lines[0]


def test_chain_files_on_postfix_3_3_fails_naming_the_layout_version_and_fix(
    tmp_path: Path,
) -> None:
    lines = _findings(tmp_path, "3.3.0", "chain-files", '"main.cf"')
    assert len(lines) == 1, lines
    assert "certificates.mail.postfix.layout: chain-files for main.cf needs Postfix 3.4" in lines[0]
    assert "(smtpd_tls_chain_files)" in lines[0] and "runs Postfix 3.3.0" in lines[0]
    assert 'fix: layout = "key-cert"' in lines[0]


def test_both_on_postfix_3_3_give_one_line_each_and_3_4_gives_none(tmp_path: Path) -> None:
    targets = '"sni:mail.example.org"'
    assert len(_findings(tmp_path, "3.3.0", "chain-files", targets)) == 2
    assert _findings(tmp_path, "3.4.0", "chain-files", targets) == []
    assert _findings(tmp_path, "3.7.11", "chain-files", targets) == []
