"""``certman status`` lines and ``certman check`` problems for DH parameters; the state file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fake_postconf import FakePostfix
from test_dhparams_support import DAY, FIXTURES, dh_config

from certman.config.schema import DhMode
from certman.dh.groups import published_groups, to_pem
from certman.dh.plan import GENERATED, DhState, FileRecord, Job, load_state, save_state
from certman.dh.run import check, status
from certman.errors import CertmanError
from certman.postfix.commands import Postfix

PARAM = "smtpd_tls_dh1024_param_file"
NOW = 1_750_000_000.0


def ldd(openssl3: bool) -> Any:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert argv[0] == "ldd" and argv[1].endswith("/smtpd")
        lib = "libssl.so.3" if openssl3 else "libssl.so.1.1"
        return subprocess.CompletedProcess(argv, 0, f"\t{lib} => /lib/{lib} (0x0)\n", "")

    return run


@pytest.fixture
def fake(tmp_path: Path) -> FakePostfix:
    return FakePostfix(tmp_path / "postfix", main_cf={"daemon_directory": "/usr/lib/postfix/sbin"})


def postfix_of(fake: FakePostfix) -> Postfix:
    return Postfix(fake.config(), run=fake)


def test_state_round_trips_and_a_corrupt_state_names_its_file(tmp_path: Path) -> None:
    record = FileRecord("/etc/postfix/dh.pem", 2048, "generate", NOW, "ab" * 32, GENERATED)
    job = Job("/etc/postfix/dh4096.pem", 4096, 123, NOW, "/etc/postfix/.dh4096.pem.x", 2, "oom")
    state = DhState({record.path: record}, {job.path: job})
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert oct((tmp_path / "dhparams" / "state.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "dhparams" / "state.json").write_text("{not json")
    with pytest.raises(CertmanError, match=r"dhparams/state\.json: unreadable DH parameter state"):
        load_state(tmp_path)
    assert load_state(tmp_path / "elsewhere") == DhState()


def test_status_shows_contents_age_next_due_and_a_running_generation(tmp_path: Path) -> None:
    dh2048, dh4096 = tmp_path / "dh2048.pem", tmp_path / "dh4096.pem"
    dh2048.write_bytes((FIXTURES / "dh2048.pem").read_bytes())
    config = dh_config(DhMode.GENERATE, (dh2048, 2048), (dh4096, 4096), parameter=PARAM)
    record = FileRecord(
        str(dh2048), 2048, "generate", NOW - 3 * DAY, "0123456789abcdef" * 4, GENERATED
    )
    job = Job(
        str(dh4096), 4096, 999_999_999, NOW - 600, str(tmp_path / ".dh4096.pem.x"), 2, "killed"
    )
    save_state(tmp_path / "state", DhState({str(dh2048): record}, {str(dh4096): job}))
    lines = status(config, tmp_path / "state", NOW)
    assert lines[0] == (
        f"DH parameters: mode generate, every 30 days, 2 workers at nice 0; "
        f"main.cf {PARAM} -> {dh2048}"
    )
    assert lines[1] == (
        f"  {dh2048}: 2048-bit, generated locally 2025-06-12 15:06 UTC (3 days ago), "
        "sha256 0123456789abcdef; due 2025-07-12 15:06 UTC"
    )
    assert lines[2] == f"  {dh4096}: 4096-bit, not written by certman yet [file missing]"
    assert lines[3] == (
        "    generation ended without a result, restarts on next run: pid 999999999, started "
        "2025-06-15 14:56 UTC"
        " (10 min ago); attempt 2, previous: killed"
    )


def test_status_names_the_published_group(tmp_path: Path) -> None:
    target = tmp_path / "dh.pem"
    target.write_bytes(to_pem(published_groups()["modp3072"]))
    config = dh_config(DhMode.RFC3526, (target, 3072))
    record = FileRecord(str(target), 3072, "rfc3526", NOW, "f" * 64, "modp3072")
    save_state(tmp_path / "state", DhState({str(target): record}))
    assert "3072-bit, modp3072 (RFC 3526 group 15)" in status(config, tmp_path / "state", NOW)[1]


def test_check_is_quiet_when_all_is_well(tmp_path: Path, fake: FakePostfix) -> None:
    target = tmp_path / "dh.pem"
    target.write_bytes(to_pem(published_groups()["ffdhe2048"]))
    fake.main_cf[PARAM] = str(target)
    config = dh_config(DhMode.RFC7919, (target, 2048), parameter=PARAM)
    assert check(config, postfix_of(fake), tmp_path / "state", NOW) == []


def test_check_reports_each_way_the_pointed_at_file_can_be_wrong(
    tmp_path: Path, fake: FakePostfix
) -> None:
    target = tmp_path / "dh.pem"
    fake.main_cf[PARAM] = str(target)
    config = dh_config(DhMode.GENERATE, (target, 2048), parameter=PARAM, interval=30)
    postfix, state = postfix_of(fake), tmp_path / "state"
    where = f"({PARAM} points here)"
    assert check(config, postfix, state, NOW) == [f"{target}: missing {where}"]
    target.write_text("-----BEGIN DH PARAMETERS-----\nMIIB")  # half-written
    assert check(config, postfix, state, NOW) == [
        f"{target}: no complete '-----BEGIN DH PARAMETERS-----' block {where}"
    ]
    target.write_bytes((FIXTURES / "dh1024.pem").read_bytes())
    assert check(config, postfix, state, NOW) == [
        f"{target}: 1024-bit DH parameters, below 2048 bits {where}"
    ]
    target.write_bytes((FIXTURES / "dh2048.pem").read_bytes())
    os.utime(target, (NOW - 31 * DAY, NOW - 31 * DAY))
    assert check(config, postfix, state, NOW) == [
        f"{target}: generated 31 days ago, older than the 30-day schedule {where}"
    ]
    os.utime(target, (NOW - 29 * DAY, NOW - 29 * DAY))
    assert check(config, postfix, state, NOW) == []


def test_check_reports_main_cf_pointing_elsewhere_and_a_wrong_group(
    tmp_path: Path, fake: FakePostfix
) -> None:
    target, other = tmp_path / "dh.pem", tmp_path / "other.pem"
    target.write_bytes(to_pem(published_groups()["modp2048"]))
    other.write_bytes((FIXTURES / "dh2048.pem").read_bytes())
    fake.main_cf[PARAM] = str(other)
    config = dh_config(DhMode.RFC7919, (target, 2048), parameter=PARAM)
    assert check(config, postfix_of(fake), tmp_path / "state", NOW) == [
        f"{fake.config_dir}/main.cf: {PARAM} = {other}, not {target}",
        f"{target}: holds modp2048, mode rfc7919 wants ffdhe2048",
    ]


def test_check_auto_mode(tmp_path: Path, fake: FakePostfix) -> None:
    config = dh_config(DhMode.AUTO)
    postfix, state = postfix_of(fake), tmp_path / "state"
    assert check(config, postfix, state, NOW, run=ldd(True)) == []
    fake.main_cf[PARAM] = "auto"
    assert check(config, postfix, state, NOW, run=ldd(True)) == []
    [old_openssl] = check(config, postfix, state, NOW, run=ldd(False))
    assert "needs Postfix >= 3.7 built with OpenSSL 3 (Postfix 3.7.11 without OpenSSL 3)" in (
        old_openssl
    )
    fake.main_cf["mail_version"] = "3.6.4"
    [old_postfix] = check(config, postfix, state, NOW, run=ldd(True))
    assert "(Postfix 3.6.4)" in old_postfix
    fake.main_cf["mail_version"] = "3.8.1"
    fake.main_cf[PARAM] = str(FIXTURES / "dh2048.pem")
    [overridden] = check(config, postfix, state, NOW, run=ldd(True))
    assert overridden.startswith(f"dhparams mode auto: {PARAM} = {FIXTURES / 'dh2048.pem'}")


def test_check_names_postconf_when_it_fails(tmp_path: Path, fake: FakePostfix) -> None:
    fake.fail_on = "-x"
    [problem] = check(dh_config(DhMode.OFF), postfix_of(fake), tmp_path / "state", NOW)
    assert problem.startswith(f"postconf -c {fake.config_dir} -x failed (exit 1)")
