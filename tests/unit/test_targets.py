"""Targets, pure parts: parsing, the SNI table's source file, a service's pinned overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from certman.config.schema import (
    CertificateConfig,
    Challenge,
    InstallConfig,
    Layout,
    Target,
    TargetKind,
)
from certman.model import KeyType
from certman.postfix.install import _param_changes
from certman.postfix.targets import certbot_lineage, read_sni_entry, write_sni_entry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("main.cf", Target(TargetKind.MAIN)),
        ("submission/inet", Target(TargetKind.SERVICE, service="submission/inet")),
        ("127.0.0.1:2525/inet", Target(TargetKind.SERVICE, service="127.0.0.1:2525/inet")),
        ("sni:Mail.Example.org.", Target(TargetKind.SNI, name="mail.example.org")),
        ("master.cf", None),
        ("submission", None),
        ("sni:", None),
        ("sni:not a name", None),
    ],
)
def test_target_parses_main_service_and_sni(text: str, expected: Target | None) -> None:
    assert Target.parse(text) == expected
    if expected is not None:
        assert Target.parse(str(expected)) == expected


def test_sni_entry_changes_only_its_own_line(tmp_path: Path) -> None:
    source = tmp_path / "sni"
    source.write_text(
        "# operator's table\nother.example.org /etc/x.pem\nmail.example.org /old.pem\n"
    )
    source.chmod(0o640)
    assert read_sni_entry(source, "mail.example.org") == "/old.pem"
    write_sni_entry(source, "mail.example.org", "/new.pem")
    assert source.read_text() == (
        "# operator's table\nother.example.org /etc/x.pem\nmail.example.org /new.pem\n"
    )
    assert source.stat().st_mode & 0o777 == 0o640
    write_sni_entry(source, "mail.example.org", None)
    assert read_sni_entry(source, "mail.example.org") is None
    assert read_sni_entry(source, "other.example.org") == "/etc/x.pem"


def test_a_new_sni_source_is_private(tmp_path: Path) -> None:
    """postmap -F copies the files' contents, private keys included, into the table."""
    source = tmp_path / "sni-map"
    write_sni_entry(source, "a.example.org", "/a.pem")
    assert source.read_text() == "a.example.org /a.pem\n"
    assert source.stat().st_mode & 0o777 == 0o600


def _cert(layout: Layout) -> CertificateConfig:
    install = InstallConfig(layout, Path("/c"), True)
    return CertificateConfig(
        "sub", ("mail.example.org",), (KeyType.ECDSA_P256,), Challenge.DNS01, "p", {}, None,
        None, install, None, True, None,
    )  # fmt: skip


def test_a_service_pins_every_tls_file_setting() -> None:
    """A service without overrides inherits main.cf: every setting becomes explicit, so another
    certificate's change to main.cf never reaches the service."""
    unset = "\0unset"
    names = ("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_key_file",
             "smtpd_tls_eccert_file", "smtpd_tls_eckey_file")  # fmt: skip
    pinned = dict.fromkeys(names, unset)
    chain = _param_changes(_cert(Layout.CHAIN_FILES), [KeyType.ECDSA_P256], ["/c/sub.pem"], pinned)
    assert chain == {"smtpd_tls_chain_files": "/c/sub.pem"}
    legacy = _param_changes(_cert(Layout.KEY_CERT), [KeyType.ECDSA_P256], ["/c/k", "/c/c"], pinned)
    assert legacy == {
        "smtpd_tls_cert_file": "/c/c",
        "smtpd_tls_key_file": "/c/k",
        "smtpd_tls_eccert_file": "",
        "smtpd_tls_eckey_file": "",
        "smtpd_tls_chain_files": "",
    }


def test_certbot_lineage_is_recognised_by_its_layout(tmp_path: Path) -> None:
    root = tmp_path / "letsencrypt"
    (root / "renewal").mkdir(parents=True)
    (root / "archive" / "mx1").mkdir(parents=True)
    (root / "live" / "mx1").mkdir(parents=True)
    (root / "archive" / "mx1" / "privkey1.pem").write_text("")
    (root / "live" / "mx1" / "privkey.pem").symlink_to("../../archive/mx1/privkey1.pem")
    assert certbot_lineage(str(root / "live" / "mx1" / "privkey.pem")) == root / "live" / "mx1"
    assert certbot_lineage(str(root / "archive" / "mx1" / "privkey1.pem")) == root / "live" / "mx1"
    assert certbot_lineage(str(tmp_path / "postfix" / "certman" / "mx1.pem")) is None


def _sni_cert(name: str, config_dir: Path) -> CertificateConfig:
    target = Target(TargetKind.SNI, name=f"{name}.example.org")
    install = InstallConfig(Layout.CHAIN_FILES, Path("/c"), True, config_dir, (target,))
    return CertificateConfig(
        name, (f"{name}.example.org",), (KeyType.ECDSA_P256,), Challenge.DNS01, "p", {}, None,
        None, install, None, True, None,
    )  # fmt: skip


def test_run_warnings_read_postfix_once_for_all_certificates(tmp_path: Path) -> None:
    """Issue 12's certbot-lineage warning ran one postconf per target and re-read the SNI
    source per certificate: a full `certman run` with 1,000 certificates spent seconds on it.
    With the run's snapshot: one postconf for the instance, same answers as per target."""
    from types import SimpleNamespace

    from fake_postconf import FakePostfix

    from certman.cli.setup import foreign_warnings
    from certman.postfix.commands import Postfix
    from certman.postfix.targets import ServedFiles, served_file_paths

    root = tmp_path / "letsencrypt"
    (root / "renewal").mkdir(parents=True)
    (root / "live" / "c7").mkdir(parents=True)
    source = tmp_path / "sni"
    lines = [f"c{i}.example.org /certman/c{i}.pem" for i in range(50)]
    lines[7] = f"c7.example.org {root}/live/c7/privkey.pem,{root}/live/c7/fullchain.pem"
    source.write_text("# table\n" + "\n".join(lines) + "\n")
    fake = FakePostfix(tmp_path / "etc", {"tls_server_sni_maps": f"hash:{source}"})
    postfix = Postfix(fake.config(), run=fake)
    certs = [_sni_cert(f"c{i}", fake.config_dir) for i in range(50)]
    ctx = SimpleNamespace(postfix_for=lambda cert: postfix)

    per_target = [served_file_paths(postfix, c.install.targets[0]) for c in certs]
    fake.calls.clear()
    served = ServedFiles(postfix)
    assert [served.paths(c.install.targets[0]) for c in certs] == per_target
    assert served.paths(Target(TargetKind.MAIN)) == served_file_paths(
        postfix, Target(TargetKind.MAIN)
    )

    fake.calls.clear()
    snapshots: dict[str, ServedFiles] = {}
    warnings = [w for c in certs for w in foreign_warnings(ctx, c, snapshots)]  # type: ignore[arg-type]
    assert len(fake.calls) == 1
    assert len(warnings) == 1 and "c7" in warnings[0] and "certbot" in warnings[0]


def test_run_warnings_try_a_failing_postconf_once(tmp_path: Path) -> None:
    """postconf's fatal exit takes a second (no main.cf, a broken one): with 1,000 certificates
    the warnings alone took 1,000 s. The snapshot remembers the failure."""
    from types import SimpleNamespace

    from fake_postconf import FakePostfix

    from certman.cli.setup import foreign_warnings
    from certman.postfix.commands import Postfix
    from certman.postfix.targets import ServedFiles

    fake = FakePostfix(tmp_path / "etc", {})
    fake.fail_on = "-x"
    postfix = Postfix(fake.config(), run=fake)
    ctx = SimpleNamespace(postfix_for=lambda cert: postfix)
    snapshots: dict[str, ServedFiles] = {}
    certs = [_sni_cert(f"c{i}", fake.config_dir) for i in range(20)]
    assert [foreign_warnings(ctx, c, snapshots) for c in certs] == [[]] * 20  # type: ignore[arg-type]
    assert len(fake.calls) == 1
