"""advance() / generate_now() with real ``openssl dhparam 512`` runs and a recording Postfix.

Background generations here are real detached processes; each test waits for them or kills them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_postconf import FakePostfix
from test_dhparams_support import (
    DAY,
    FIXTURES,
    SLEEPER,
    TINY,
    dh_config,
    fake_openssl,
    slow_settings,
    wait_for_jobs,
)

from certman.config.schema import DhMode
from certman.dh import gen as dhgen
from certman.dh.groups import DhParamsError, check_group, parse_pem, published_groups, to_pem
from certman.dh.plan import load_state, save_state
from certman.dh.run import advance, generate_now
from certman.postfix.commands import Postfix

PARAM = "smtpd_tls_dh1024_param_file"
NOW = 1_750_000_000.0


@pytest.fixture
def fake(tmp_path: Path) -> FakePostfix:
    return FakePostfix(tmp_path / "postfix")


@pytest.fixture
def postfix(fake: FakePostfix) -> Postfix:
    return Postfix(fake.config(), run=fake)


@pytest.fixture(autouse=True)
def _no_stray_generators(tmp_path: Path) -> Iterator[None]:
    yield
    for job in load_state(tmp_path / "state").jobs.values():
        dhgen.stop(job.pid, Path(job.tmp))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rfc7919_writes_the_group_points_main_cf_and_reloads_once(
    tmp_path: Path, fake: FakePostfix, postfix: Postfix
) -> None:
    target = tmp_path / "dh2048.pem"
    config = dh_config(DhMode.RFC7919, (target, 2048), parameter=PARAM)
    report = advance(config, postfix, tmp_path / "state", NOW)
    assert report.ok, report.errors
    assert target.read_bytes() == to_pem(published_groups()["ffdhe2048"])
    assert fake.main_cf[PARAM] == str(target)
    assert fake.reloads == 1 and report.reloaded
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    again = advance(config, postfix, tmp_path / "state", NOW + DAY)
    assert again.written == () and fake.reloads == 1
    assert again.lines() == ["DH parameters: nothing to do"]


def test_background_generation_is_installed_by_a_later_run(
    tmp_path: Path, fake: FakePostfix, postfix: Postfix
) -> None:
    target, state_dir = tmp_path / "dh.pem", tmp_path / "state"
    config = dh_config(DhMode.GENERATE, (target, 512), parameter=PARAM)
    first = advance(config, postfix, state_dir, NOW, settings=TINY)
    assert first.ok and first.pending == (str(target),) and not target.exists()
    assert fake.reloads == 0 and PARAM not in fake.main_cf  # never pointed at a missing file
    job = load_state(state_dir).jobs[str(target)]
    assert Path(job.tmp).parent == target.parent  # same directory: the install is a rename
    wait_for_jobs(state_dir)
    second = advance(config, postfix, state_dir, NOW + 60, settings=TINY)
    assert second.ok, second.errors
    assert second.written == (str(target), f"{fake.config_dir}/main.cf")
    check_group(parse_pem(target.read_bytes(), str(target)), 512, str(target))
    assert fake.main_cf[PARAM] == str(target) and fake.reloads == 1
    record = load_state(state_dir).files[str(target)]
    assert (record.bits, record.sha256, record.contents) == (512, sha(target), "generated")
    assert not load_state(state_dir).jobs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dh.pem", "state"]  # no leftovers


def test_cron_run_during_a_pending_generation_returns_at_once(
    tmp_path: Path, postfix: Postfix
) -> None:
    target, state_dir = tmp_path / "dh.pem", tmp_path / "state"
    config = dh_config(DhMode.GENERATE, (target, 512))
    start = time.monotonic()
    advance(config, postfix, state_dir, NOW, settings=slow_settings(tmp_path))
    started = time.monotonic() - start
    start = time.monotonic()
    report = advance(config, postfix, state_dir, NOW + 3600, settings=slow_settings(tmp_path))
    waited = time.monotonic() - start
    assert report.pending == (str(target),)
    assert "generation running for 60 min" in report.lines()[0]
    assert started < 0.5 and waited < 0.5, (started, waited)


def test_killed_generation_leaves_the_old_file_alone_and_is_restarted(
    tmp_path: Path, fake: FakePostfix, postfix: Postfix
) -> None:
    target, state_dir = tmp_path / "dh.pem", tmp_path / "state"
    target.write_bytes((FIXTURES / "dh512.pem").read_bytes())
    os.utime(target, (NOW - 40 * DAY, NOW - 40 * DAY))  # adopted, 40 days old: due
    old = sha(target)
    config = dh_config(DhMode.GENERATE, (target, 512))
    started = advance(config, postfix, state_dir, NOW, settings=slow_settings(tmp_path))
    assert started.pending == (str(target),)
    job = load_state(state_dir).jobs[str(target)]
    deadline = time.monotonic() + 5
    while len(_workers_of(job.tmp, gone=False)) < 3:  # the generator and its two workers
        assert time.monotonic() < deadline, "the generator did not start two workers"
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    wait_for_jobs(state_dir, timeout=5)
    assert not _workers_of(job.tmp)  # the workers died with it (PR_SET_PDEATHSIG)
    assert sha(target) == old and fake.reloads == 0
    restarted = advance(config, postfix, state_dir, NOW + 3600, settings=TINY)
    assert any("ended without a result" in line for line in restarted.lines()), restarted.lines()
    new_job = load_state(state_dir).jobs[str(target)]
    assert (new_job.attempt, new_job.pid != job.pid) == (2, True)
    assert not list(tmp_path.glob(f"{Path(job.tmp).name}*"))  # the dead job's files are gone
    wait_for_jobs(state_dir)
    installed = advance(config, postfix, state_dir, NOW + 7200, settings=TINY)
    assert installed.written == (str(target),) and sha(target) != old
    assert fake.reloads == 1


def _workers_of(marker: str, *, gone: bool = True) -> list[int]:
    """Live processes naming ``marker``; with ``gone``, after waiting up to 2 s for none."""
    deadline = time.monotonic() + 2
    while True:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
        alive = [pid for pid in pids if dhgen.is_running(pid, marker)]
        if not gone or not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_tampered_result_is_not_installed(tmp_path: Path, postfix: Postfix) -> None:
    target, state_dir = tmp_path / "dh.pem", tmp_path / "state"
    config = dh_config(DhMode.GENERATE, (target, 512))
    advance(config, postfix, state_dir, NOW, settings=TINY)
    wait_for_jobs(state_dir)
    job = load_state(state_dir).jobs[str(target)]
    Path(job.tmp).write_bytes((FIXTURES / "dh512.pem").read_bytes())  # not what was validated
    report = advance(config, postfix, state_dir, NOW + 60, settings=TINY)
    assert not target.exists()
    assert any("content changed after validation" in e for e in report.errors), report.errors


def test_pid_reused_by_another_process_does_not_count_as_running(
    tmp_path: Path, postfix: Postfix
) -> None:
    target, state_dir = tmp_path / "dh.pem", tmp_path / "state"
    config = dh_config(DhMode.GENERATE, (target, 512))
    advance(config, postfix, state_dir, NOW, settings=slow_settings(tmp_path))
    state = load_state(state_dir)
    job = state.jobs[str(target)]
    dhgen.stop(job.pid, Path(job.tmp))
    impostor = subprocess.Popen(["sleep", "30"])  # alive, but not our generator
    try:
        jobs = {str(target): type(job)(**{**job.__dict__, "pid": impostor.pid})}
        save_state(state_dir, type(state)(state.files, jobs))
        report = advance(config, postfix, state_dir, NOW + 60, settings=TINY)
        assert any("ended without a result" in line for line in report.lines())
        assert impostor.poll() is None  # and it was not killed
    finally:
        impostor.kill()
        impostor.wait()


def test_a_zombie_is_not_a_running_generator(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    child = subprocess.Popen(["sh", "-c", f"exec sleep 0.1 {marker} 2>/dev/null || true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(child.pid, 0)  # kill -0 still says "alive" (TESTBED-NOTES 17)
    assert not dhgen.is_running(child.pid, marker)
    child.wait()


def test_a_second_run_never_waits_for_the_lock(tmp_path: Path, postfix: Postfix) -> None:
    state_dir = tmp_path / "state"
    config = dh_config(DhMode.RFC7919, (tmp_path / "dh.pem", 2048))
    (state_dir / "dhparams").mkdir(parents=True)
    with open(state_dir / "dhparams" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        report = advance(config, postfix, state_dir, NOW)
    assert report.locked and not (tmp_path / "dh.pem").exists()


def test_generate_now_runs_in_the_foreground_with_progress(
    tmp_path: Path, fake: FakePostfix, postfix: Postfix
) -> None:
    target = tmp_path / "dh.pem"
    target.write_bytes((FIXTURES / "dh512.pem").read_bytes())  # fresh: --now redoes it anyway
    old = sha(target)
    config = dh_config(DhMode.GENERATE, (target, 512), parameter=PARAM)
    seen: list[str] = []
    report = generate_now(config, postfix, tmp_path / "state", progress=seen.append, settings=TINY)
    assert report.ok, report.errors
    assert sha(target) != old and fake.reloads == 1 and fake.main_cf[PARAM] == str(target)
    assert seen and "generating 512-bit parameters" in seen[0]
    check_group(parse_pem(target.read_bytes(), "x"), 512, "x")


def test_generator_refuses_sizes_below_2048_unless_a_test_lowers_the_floor(tmp_path: Path) -> None:
    with pytest.raises(DhParamsError, match="1024-bit DH parameters refused"):
        dhgen.generate(1024, tmp_path / "x.pem", dhgen.GeneratorSettings())


def test_worker_output_that_is_not_a_safe_prime_is_rejected(tmp_path: Path) -> None:
    group = parse_pem((FIXTURES / "dh512.pem").read_bytes(), "x")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(to_pem(type(group)(group.p ^ (1 << 300), 2)))
    openssl = fake_openssl(tmp_path, f'cp {bad} "$3"')
    settings = dhgen.GeneratorSettings(openssl=openssl, workers=2, min_bits=512)
    with pytest.raises(DhParamsError, match=r"every openssl dhparam worker failed.*not a safe"):
        dhgen.generate(512, tmp_path / "out.pem", settings)
    assert not (tmp_path / "out.pem").exists()
    assert not list(tmp_path.glob("out.pem.w*"))


def test_failing_openssl_is_reported_with_its_last_words(tmp_path: Path) -> None:
    openssl = fake_openssl(tmp_path, "echo 'dhparam: bad size' >&2; exit 3")
    settings = dhgen.GeneratorSettings(openssl=openssl, workers=1, min_bits=512)
    with pytest.raises(DhParamsError, match="openssl exited 3: dhparam: bad size"):
        dhgen.generate(512, tmp_path / "out.pem", settings)


def test_first_valid_worker_wins_and_the_others_are_killed(tmp_path: Path) -> None:
    fixture = FIXTURES / "dh512.pem"
    # worker 0 sleeps for ever; worker 1 "finds" the fixture at once
    openssl = fake_openssl(tmp_path, f'case "$3" in *.w0) {SLEEPER};; esac\ncp {fixture} "$3"')
    settings = dhgen.GeneratorSettings(openssl=openssl, workers=2, min_bits=512)
    start = time.monotonic()
    result = dhgen.generate(512, tmp_path / "out.pem", settings)
    assert result.worker == 1 and time.monotonic() - start < 5
    assert (tmp_path / "out.pem").read_bytes() == fixture.read_bytes()
    assert not _workers_of(str(tmp_path / "out.pem"))


def test_stopped_postfix_is_not_an_error_it_reads_the_file_when_it_starts(
    tmp_path: Path, fake: FakePostfix, postfix: Postfix
) -> None:
    fake.fail_on = "status"  # `postfix status` exits 1: not running
    config = dh_config(DhMode.RFC3526, (tmp_path / "dh.pem", 3072), parameter=PARAM)
    report = advance(config, postfix, tmp_path / "state", NOW)
    assert report.ok and not report.reloaded and fake.reloads == 0
    assert report.lines()[-1] == "Postfix is not running; it reads the new file when it starts"
    assert (tmp_path / "dh.pem").read_bytes() == to_pem(published_groups()["modp3072"])


def test_failed_reload_is_reported_as_an_error(
    tmp_path: Path, fake: FakePostfix, postfix: Postfix
) -> None:
    fake.fail_on = "reload"
    config = dh_config(DhMode.RFC7919, (tmp_path / "dh.pem", 2048))
    report = advance(config, postfix, tmp_path / "state", NOW)
    assert not report.ok and report.errors[0].startswith("postfix -c ")
    assert "reload failed (exit 1)" in report.errors[0]
