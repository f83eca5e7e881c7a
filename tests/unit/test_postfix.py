"""certman.postfix.commands: the commands it runs (through a fake runner) and served_keys."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from certgen import certificate_config, make_pki
from fake_postconf import FakePostfix

from certman.config.schema import PostfixConfig
from certman.errors import PostfixError
from certman.model import KeyType
from certman.postfix.commands import Postfix, parse_postconf, served_keys, version_tuple


def make(tmp_path: Path, main_cf: dict[str, str] | None = None) -> tuple[FakePostfix, Postfix]:
    fake = FakePostfix(tmp_path / "etc", dict(main_cf or {}))
    return fake, Postfix(fake.config(), run=fake)


def test_parse_postconf_keeps_empty_values_and_values_with_equals_signs() -> None:
    output = "smtpd_tls_chain_files =\nfoo = a = b\nsmtpd_tls_cert_file = /x.pem\n"
    assert parse_postconf(output) == {
        "smtpd_tls_chain_files": "",
        "foo": "a = b",
        "smtpd_tls_cert_file": "/x.pem",
    }


def test_get_asks_postconf_for_expanded_values_of_this_instance(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path, {"smtpd_tls_cert_file": "$config_directory/c.pem"})
    values = postfix.get("smtpd_tls_cert_file", "smtpd_tls_key_file")
    assert values == {
        "smtpd_tls_cert_file": f"{fake.config_dir}/c.pem",
        "smtpd_tls_key_file": f"{fake.config_dir}/c.pem",
    }
    assert fake.calls == [
        ["postconf", "-c", str(fake.config_dir), "-x", "smtpd_tls_cert_file", "smtpd_tls_key_file"]
    ]


def test_set_changes_every_value_in_one_postconf_call(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path)
    postfix.set({"smtpd_tls_cert_file": "/a b.crt", "smtpd_tls_key_file": "/a.key"})
    assert fake.calls == [
        [
            "postconf",
            "-c",
            str(fake.config_dir),
            "-e",
            "smtpd_tls_cert_file=/a b.crt",
            "smtpd_tls_key_file=/a.key",
        ]
    ]


def test_set_with_nothing_to_change_runs_nothing(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path)
    postfix.set({})
    assert fake.calls == []


def test_reload_and_check_name_the_config_directory(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path)
    postfix.reload()
    postfix.check()
    directory = str(fake.config_dir)
    assert fake.calls == [
        ["postfix", "-c", directory, "reload"],
        ["postfix", "-c", directory, "check"],
    ]


def test_configured_reload_command_replaces_postfix_reload(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    config = PostfixConfig(
        tmp_path, "postconf", "postfix", ("postmulti", "-i", "mx1", "-p", "reload")
    )
    Postfix(config, run=run).reload()
    assert calls == [["postmulti", "-i", "mx1", "-p", "reload"]]


def test_failed_command_raises_with_postfixs_fatal_line(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path)
    fake.fail_on = "reload"
    with pytest.raises(PostfixError, match=r"reload failed \(exit 1\): postfix: fatal: simulated"):
        postfix.reload()


def test_missing_binary_is_reported_as_a_postfix_error(tmp_path: Path) -> None:
    config = PostfixConfig(tmp_path, str(tmp_path / "no-postconf"), "postfix", None)
    with pytest.raises(PostfixError, match=r"cannot run .*no-postconf"):
        Postfix(config).get("mail_version")


def test_version_and_version_tuple(tmp_path: Path) -> None:
    _, postfix = make(tmp_path)
    assert postfix.version() == "3.7.11"
    assert version_tuple("3.7.11") == (3, 7, 11)
    assert version_tuple("3.10-RC1") == (3, 10)
    assert version_tuple("3.4") >= (3, 4) > version_tuple("3.3.9")


# --- served_keys -------------------------------------------------------------------------------


def test_served_keys_reads_a_chain_file_with_two_keys(tmp_path: Path) -> None:
    pki = make_pki()
    rsa = pki.leaf("mx1.dane.test", KeyType.RSA2048)
    ec = pki.leaf("mx1.dane.test")
    both = tmp_path / "both.pem"
    both.write_bytes(rsa.key_pem + pki.fullchain_pem(rsa) + ec.key_pem + pki.fullchain_pem(ec))
    _, postfix = make(tmp_path, {"smtpd_tls_chain_files": str(both)})
    served = served_keys(certificate_config(tmp_path), postfix)
    assert [s.key_type for s in served] == [KeyType.RSA2048, KeyType.ECDSA_P256]
    assert served[0].chain_pem == pki.fullchain_pem(rsa)
    assert served[1].private_key_pem == ec.key_pem
    assert {s.source_path for s in served} == {str(both)}


def test_served_keys_accepts_a_key_file_listed_just_before_its_certificate_file(
    tmp_path: Path,
) -> None:
    leaf = make_pki().leaf("mx1.dane.test")
    (tmp_path / "k.pem").write_bytes(leaf.key_pem)
    (tmp_path / "c.pem").write_bytes(leaf.cert_pem)
    _, postfix = make(tmp_path, {"smtpd_tls_chain_files": f"{tmp_path}/k.pem,{tmp_path}/c.pem"})
    [served] = served_keys(certificate_config(tmp_path), postfix)
    assert served.source_path == f"{tmp_path}/k.pem"
    assert served.chain_pem == leaf.cert_pem


def test_served_keys_reads_the_legacy_rsa_and_ecdsa_pairs(tmp_path: Path) -> None:
    pki = make_pki()
    rsa = pki.leaf("mx1.dane.test", KeyType.RSA2048)
    ec = pki.leaf("mx1.dane.test", KeyType.ECDSA_P384)
    (tmp_path / "rsa.key").write_bytes(rsa.key_pem)
    (tmp_path / "rsa.crt").write_bytes(pki.fullchain_pem(rsa))
    (tmp_path / "ec.pem").write_bytes(ec.key_pem + pki.fullchain_pem(ec))  # key_file defaults
    _, postfix = make(
        tmp_path,
        {
            "smtpd_tls_cert_file": f"{tmp_path}/rsa.crt",
            "smtpd_tls_key_file": f"{tmp_path}/rsa.key",
            "smtpd_tls_eccert_file": f"{tmp_path}/ec.pem",
        },
    )
    served = served_keys(certificate_config(tmp_path), postfix)
    assert [(s.key_type, s.source_path) for s in served] == [
        (KeyType.RSA2048, f"{tmp_path}/rsa.key"),
        (KeyType.ECDSA_P384, f"{tmp_path}/ec.pem"),
    ]


def test_served_keys_expands_config_directory_like_postfix(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path, {"smtpd_tls_chain_files": "${config_directory}/s.pem"})
    leaf = make_pki().leaf("mx1.dane.test")
    fake.config_dir.mkdir()
    (fake.config_dir / "s.pem").write_bytes(leaf.key_pem + leaf.cert_pem)
    [served] = served_keys(certificate_config(tmp_path), postfix)
    assert served.source_path == f"{fake.config_dir}/s.pem"


def test_served_keys_names_a_file_whose_key_does_not_match_its_certificate(
    tmp_path: Path,
) -> None:
    pki = make_pki()
    one, two = pki.leaf("mx1.dane.test"), pki.leaf("mx1.dane.test")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(one.key_pem + two.cert_pem)
    _, postfix = make(tmp_path, {"smtpd_tls_chain_files": str(bad)})
    with pytest.raises(PostfixError, match=f"{bad}: the private key does not match"):
        served_keys(certificate_config(tmp_path), postfix)


def test_served_keys_names_a_missing_file(tmp_path: Path) -> None:
    _, postfix = make(tmp_path, {"smtpd_tls_cert_file": f"{tmp_path}/gone.crt"})
    with pytest.raises(PostfixError, match=f"{tmp_path}/gone.crt: cannot read"):
        served_keys(certificate_config(tmp_path), postfix)


def test_served_keys_names_a_file_with_a_certificate_before_any_key(tmp_path: Path) -> None:
    leaf = make_pki().leaf("mx1.dane.test")
    path = tmp_path / "c.pem"
    path.write_bytes(leaf.cert_pem + leaf.key_pem)
    _, postfix = make(tmp_path, {"smtpd_tls_chain_files": str(path)})
    with pytest.raises(PostfixError, match=f"{path}: certificate before any private key"):
        served_keys(certificate_config(tmp_path), postfix)


def test_served_keys_is_empty_when_no_certificate_is_configured(tmp_path: Path) -> None:
    _, postfix = make(tmp_path)
    assert served_keys(certificate_config(tmp_path), postfix) == []


def test_relative_paths_are_relative_to_the_queue_directory(tmp_path: Path) -> None:
    leaf = make_pki().leaf("mx1.dane.test")
    (tmp_path / "s.pem").write_bytes(leaf.key_pem + leaf.cert_pem)
    _, postfix = make(
        tmp_path, {"queue_directory": str(tmp_path), "smtpd_tls_chain_files": "s.pem"}
    )
    [served] = served_keys(certificate_config(tmp_path), postfix)
    assert served.source_path == f"{tmp_path}/s.pem"


def test_a_silent_failure_points_at_the_mail_log(tmp_path: Path) -> None:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "")

    postfix = Postfix(PostfixConfig(tmp_path, "postconf", "postfix", None), run=run)
    with pytest.raises(PostfixError, match="no output; the reason is in syslog or the instance"):
        postfix.reload()


def test_every_command_runs_with_a_timeout_and_a_hang_is_an_error(tmp_path: Path) -> None:
    seen: list[object] = []

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(kw["timeout"])
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    postfix = Postfix(PostfixConfig(tmp_path, "postconf", "postfix", None), run=run, timeout=7)
    with pytest.raises(PostfixError, match="reload: no answer within 7 s"):
        postfix.reload()
    assert not postfix.running()
    assert seen == [7, 7]


def test_running_reflects_postfix_status(tmp_path: Path) -> None:
    fake, postfix = make(tmp_path)
    assert postfix.running()
    fake.fail_on = "status"
    assert not postfix.running()
