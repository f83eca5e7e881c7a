"""The cron fast path: an idle ``certman run`` answered from its record, and every way the record
must stop being trusted (config edited, state saved, new certificate, due time reached, corrupt)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from startup import idle_host

from certman.cli import fastpath
from certman.cli.main import main as full_main
from certman.config import schema
from certman.lifecycle import rollover
from certman.lifecycle.rollover import Policy
from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType


def _host(tmp_path: Path) -> tuple[Path, Path]:
    config = idle_host(tmp_path)
    return config, tmp_path / "state"


def _full(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = full_main(["--config", str(config), "run", "--quiet", *extra])
    return code, capsys.readouterr().out


def _fast(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int | None, str]:
    code = fastpath.try_run(["--config", str(config), "run", "--quiet", *extra])
    return code, capsys.readouterr().out


@pytest.fixture(autouse=True)
def _fastpath_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTMAN_NO_FASTPATH", raising=False)


def test_an_idle_quiet_run_records_and_the_next_one_exits_at_once_printing_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = _host(tmp_path)
    assert _fast(config, capsys) == (None, "")  # no record yet
    assert _full(config, capsys) == (0, "")
    assert (state_dir / fastpath.RECORD).stat().st_mode & 0o777 == 0o600
    assert _fast(config, capsys) == (0, "")
    # Without --quiet a run prints every certificate's status: always the full path.
    assert fastpath.try_run(["--config", str(config), "run"]) is None


def test_an_edited_config_invalidates_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = _host(tmp_path)
    _full(config, capsys)
    with config.open("a") as handle:
        handle.write("# a comment changes nothing, and still counts as an edit\n")
    assert _fast(config, capsys) == (None, "")
    _full(config, capsys)
    assert _fast(config, capsys)[0] == 0


def test_a_new_certificate_invalidates_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = _host(tmp_path)
    _full(config, capsys)
    text = config.read_text().replace(
        "[certificates.mx1]",
        '[certificates.mx2]\ndomains = ["mx2.example.org"]\n\n[certificates.mx1]',
    )
    config.write_text(text)
    assert _fast(config, capsys) == (None, "")


def test_a_saved_state_file_invalidates_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = _host(tmp_path)
    _full(config, capsys)
    cdir = CertDir.of(state_dir, "mx1")
    cdir.save(cdir.load("mx1"))  # same content, new file: still an edit
    assert _fast(config, capsys) == (None, "")


def test_the_record_lapses_when_the_clock_reaches_the_due_time_minus_max_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, state_dir = _host(tmp_path)
    cdir = CertDir.of(state_dir, "mx1")
    renew_at = time.time() + 3600
    cdir.save(dataclasses.replace(cdir.load("mx1"), renew_after=renew_at))
    _full(config, capsys)
    due = float((state_dir / fastpath.RECORD).read_text().split("\n")[2].split("\t")[1])
    assert due == renew_at
    monkeypatch.setattr(time, "time", lambda: renew_at - 31)
    assert _fast(config, capsys)[0] == 0
    assert _fast(config, capsys, "--max-wait", "40") == (None, "")
    monkeypatch.setattr(time, "time", lambda: renew_at - 30)
    assert _fast(config, capsys) == (None, "")
    monkeypatch.setattr(time, "time", lambda: renew_at + 1)
    assert _fast(config, capsys) == (None, "")


def test_a_waiting_certificate_is_answered_until_its_wait_comes_within_max_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, state_dir = _host(tmp_path)
    cdir = CertDir.of(state_dir, "mx1")
    not_before = time.time() + 600
    state = cdir.load("mx1").evolve(
        phase=Phase.AGE, operation=Operation.ROLLOVER, tlsa=TlsaProgress(not_before=not_before)
    )
    cdir.save(state)
    assert _full(config, capsys) == (0, "")
    assert _fast(config, capsys) == (0, "")
    monkeypatch.setattr(time, "time", lambda: not_before - 30)
    assert _fast(config, capsys) == (None, "")


def test_a_run_that_fails_or_backs_off_writes_no_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = _host(tmp_path)
    cdir = CertDir.of(state_dir, "mx1")
    failed = cdir.load("mx1").evolve(last_error="CA said no", retry_after=time.time() + 600)
    cdir.save(failed)
    code, _ = _full(config, capsys)
    assert code == 1
    assert not (state_dir / fastpath.RECORD).exists()


def test_a_run_with_a_metrics_file_writes_no_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = _host(tmp_path)
    text = config.read_text()
    config.write_text(f'{text}\n[metrics]\ntextfile = "{tmp_path / "certman.prom"}"\n')
    assert _full(config, capsys) == (0, "")
    assert (tmp_path / "certman.prom").exists()
    assert not (state_dir / fastpath.RECORD).exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: "",
        lambda text: "garbage\n",
        lambda text: text.replace("end\n", ""),  # truncated
        lambda text: text.replace("certman-fastpath 1", "certman-fastpath 2"),
        lambda text: "\n".join(
            "due\tnan" if line.startswith("due\t") else line for line in text.split("\n")
        ),
        lambda text: "\n".join(
            "due\tsoon" if line.startswith("due\t") else line for line in text.split("\n")
        ),
        lambda text: text.replace("\nfile\t", "\nfile\t1:2:3:4:5\t"),
        lambda text: text.replace("\nfile\t", "\nunknown\t"),
        lambda text: text.replace("\nend\n", "\nend\nmore\n"),
    ],
)
def test_a_corrupt_record_falls_back_to_the_full_path_which_rewrites_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[str], str]
) -> None:
    config, state_dir = _host(tmp_path)
    _full(config, capsys)
    record = state_dir / fastpath.RECORD
    good = record.read_text()
    record.write_text(damage(good))
    assert _fast(config, capsys) == (None, "")
    assert _full(config, capsys) == (0, "")
    assert record.read_text().split("\n")[3:] == good.split("\n")[3:]  # due: a new start
    assert _fast(config, capsys) == (0, "")


def test_a_record_of_another_config_file_is_not_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = _host(tmp_path)
    _full(config, capsys)
    twin = tmp_path / "twin.toml"
    twin.write_text(config.read_text())  # same content, same state_dir, another file
    assert _fast(twin, capsys) == (None, "")


def test_a_run_for_named_certificates_neither_uses_nor_writes_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = _host(tmp_path)
    _full(config, capsys, "mx1")
    assert not (state_dir / fastpath.RECORD).exists()
    assert fastpath.parse_run_args(["--config", str(config), "run", "mx1"]) is None


def test_disabled_by_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = _host(tmp_path)
    _full(config, capsys)
    monkeypatch.setenv("CERTMAN_NO_FASTPATH", "1")
    assert _fast(config, capsys) == (None, "")


def test_argument_forms() -> None:
    parse = fastpath.parse_run_args
    assert parse(["-c", "/x.toml", "run", "-q"]) == ("/x.toml", 30.0)
    assert parse(["-q", "--config", "/x.toml", "run", "--max-wait", "5"]) == ("/x.toml", 5.0)
    for argv in (
        ["run", "-q", "--max-wait", "inf"],
        ["run", "-q", "--max-wait", "x"],
        ["run"],  # prints the status of every certificate
        ["-v", "run", "-q"],
        ["--log-format", "json", "run", "-q"],
        ["status"],
        [],
    ):
        assert parse(argv) is None, argv
    assert parse(["--config=/x.toml", "run", "-q"]) is None  # argparse's other spellings


def test_state_dir_is_read_only_when_written_plainly() -> None:
    assert fastpath.state_dir_of('[certman]\nstate_dir = "/s" # c\n') == "/s"
    assert fastpath.state_dir_of("[acme]\nx = 1\n[certman]\nstate_dir = '/t'\n") == "/t"
    assert fastpath.state_dir_of('[certman]\nstate_dir = "/a\\\\b"\n') is None
    assert fastpath.state_dir_of("[certman]\nresolvers = []\n[acme]\nstate_dir = '/no'\n") == (
        fastpath.DEFAULT_STATE_DIR
    )


def test_defaults_match_the_configuration_and_the_parser() -> None:
    from certman.cli.main import build_parser

    assert Path(fastpath.DEFAULT_CONFIG) == schema.DEFAULT_CONFIG
    assert Path(fastpath.DEFAULT_STATE_DIR) == schema.DEFAULT_STATE_DIR
    args = build_parser().parse_args(["run"])
    assert args.max_wait == fastpath.DEFAULT_MAX_WAIT


def test_identity_changes_with_every_write(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert fastpath.identity(path) == "-"
    path.write_text("a")
    first = fastpath.identity(path)
    os.utime(path, ns=(0, 0))
    assert fastpath.identity(path) != first


# -- rollover.next_change: what the record's due time rests on --------------------------------

T0 = 1_800_000_000.0
times = st.one_of(st.none(), st.floats(T0 - 1e6, T0 + 1e6))


def _key(created: float) -> KeyInfo:
    return KeyInfo("ecdsa-p256-aa", KeyType.ECDSA_P256, "aa" * 32, created)


@st.composite
def states(draw: st.DrawFn) -> State:
    cur = _key(draw(st.floats(T0 - 1e7, T0 + 1e6)))
    certs = {"ecdsa-p256": CertInfo(cur.id, "01", T0, T0 + 1e7, None, "/x")}
    return State(
        name="mx1",
        phase=draw(st.sampled_from([Phase.STEADY, Phase.AGE, Phase.CONFIRM])),
        operation=draw(st.sampled_from([None, *Operation])),
        current={"ecdsa-p256": cur},
        next=draw(st.sampled_from([{}, {"ecdsa-p256": _key(T0)}])),
        certs=draw(st.sampled_from([{}, certs])),
        tlsa=TlsaProgress(not_before=draw(times)),
        next_ready_at=draw(times),
        renew_after=draw(times),
        ari_recheck_at=draw(times),
        retry_after=draw(times),
    )


@settings(max_examples=400)
@given(
    state=states(),
    now=st.floats(T0 - 1e6, T0 + 1e6),
    later=st.floats(0, 1),
    policy=st.builds(
        Policy,
        dane=st.booleans(),
        margin=st.just(0.0),
        rollover_days=st.sampled_from([0, 1, 30]),
        ari=st.booleans(),
    ),
)
def test_decide_does_not_change_before_next_change(
    state: State, now: float, later: float, policy: Policy
) -> None:
    until = rollover.next_change(state, now, policy)
    assert until > now
    t = now + later * (min(until, now + 1e7) - now)
    if t < until:
        assert rollover.decide(state, t, policy) == rollover.decide(state, now, policy)


def test_fleet_mode_is_never_recorded(tmp_path: Path) -> None:
    """In fleet mode another host can change the shared lineage in S3, which no local file's
    identity would show: such a run never leaves a record, even when it changed nothing."""
    from certman.cli import unattended
    from certman.config.load import load_config

    config, state_dir = _host(tmp_path)
    key = tmp_path / "fleet.key"
    key.write_text("00" * 32)
    key.chmod(0o600)
    with config.open("a") as handle:
        handle.write(f'\n[fleet]\nbucket = "certs"\nkey_file = "{key}"\n')
    cfg = load_config(config)
    assert cfg.fleet is not None
    files = unattended._state_identities(cfg)
    unattended._remember_idle_run(cfg, fastpath.identity(config), files, [], time.time())
    assert not (state_dir / fastpath.RECORD).exists()


def test_an_edited_main_cf_invalidates_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run warns when a target reads a certbot lineage (from main.cf, master.cf): an edit
    there must reach the full path, which reads them again."""
    config, _ = _host(tmp_path)
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    (postfix / "main.cf").write_text("compatibility_level = 3.6\n")
    with config.open("a") as handle:
        handle.write(f'\n[postfix]\nconfig_dir = "{postfix}"\n')
    assert _full(config, capsys) == (0, "")
    assert _fast(config, capsys) == (0, "")
    with (postfix / "main.cf").open("a") as handle:
        handle.write("smtpd_tls_chain_files = /etc/letsencrypt/live/mx/privkey.pem\n")
    assert _fast(config, capsys) == (None, "")
