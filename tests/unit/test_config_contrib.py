"""The operator-facing files in contrib/ and hooks/: the certbot hook runs, the units, cron line and
Postfix snippet say what certman needs, and the snippet points at the files certman writes."""

from __future__ import annotations

import configparser
import itertools
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "hooks" / "certbot-deploy"
SERVICE = ROOT / "contrib" / "systemd" / "certman.service"
TIMER = ROOT / "contrib" / "systemd" / "certman.timer"
CRON = ROOT / "contrib" / "cron" / "certman"
SNIPPET = ROOT / "contrib" / "postfix" / "main.cf.snippet"

# A stand-in for certman that records how the hook called it.
FAKE_CERTMAN = """#!/bin/sh
{
  printf 'argv=%s\\n' "$*"
  printf 'lineage=%s\\n' "${RENEWED_LINEAGE-unset}"
  printf 'domains=%s\\n' "${RENEWED_DOMAINS-unset}"
  printf 'config=%s\\n' "${CERTMAN_CONFIG-unset}"
} >"$CALLS"
exit "${FAKE_EXIT:-0}"
"""


def run_hook(
    tmp: Path, env: dict[str, str], *, with_certman: bool = True, shell: str | None = None
) -> subprocess.CompletedProcess[str]:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    if with_certman:
        fake = bindir / "certman"
        fake.write_text(FAKE_CERTMAN)
        fake.chmod(0o755)
    base = {"PATH": f"{bindir}:/usr/bin:/bin", "CALLS": str(tmp / "calls")}
    argv = [shell, str(HOOK)] if shell else [str(HOOK)]
    return subprocess.run(
        argv, env=base | env, capture_output=True, text=True, timeout=10, check=False
    )


def calls(tmp: Path) -> dict[str, str]:
    lines = (tmp / "calls").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


CERTBOT_ENV = {
    "RENEWED_LINEAGE": "/etc/letsencrypt/live/mx1.example.org",
    "RENEWED_DOMAINS": "mx1.example.org mx.example.org",
}


def test_hook_is_an_executable_posix_shell_script() -> None:
    assert HOOK.read_text().startswith("#!/bin/sh\n")
    assert os.access(HOOK, os.X_OK)
    dash = shutil.which("dash") or "/bin/sh"
    subprocess.run([dash, "-n", str(HOOK)], check=True)


@pytest.mark.parametrize("shell", [None, "dash", "bash"])
def test_hook_execs_certman_with_certbots_variables(tmp_path: Path, shell: str | None) -> None:
    result = run_hook(tmp_path, CERTBOT_ENV, shell=shell and shutil.which(shell))
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == {
        "argv": "hook certbot-deploy",
        "lineage": "/etc/letsencrypt/live/mx1.example.org",
        "domains": "mx1.example.org mx.example.org",
        "config": "unset",
    }
    assert "handing /etc/letsencrypt/live/mx1.example.org" in result.stderr
    assert result.stdout == ""


def test_hook_passes_the_config_path_on(tmp_path: Path) -> None:
    result = run_hook(tmp_path, CERTBOT_ENV | {"CERTMAN_CONFIG": "/srv/certman.toml"})
    assert result.returncode == 0, result.stderr
    found = calls(tmp_path)
    assert found["argv"] == "--config /srv/certman.toml hook certbot-deploy"
    assert found["config"] == "/srv/certman.toml"


def test_hook_returns_certmans_exit_status(tmp_path: Path) -> None:
    result = run_hook(tmp_path, CERTBOT_ENV | {"FAKE_EXIT": "75"})
    assert result.returncode == 75


def test_hook_fails_loudly_without_certman_on_path(tmp_path: Path) -> None:
    result = run_hook(tmp_path, CERTBOT_ENV, with_certman=False)
    assert result.returncode == 127
    assert "certman not found on PATH" in result.stderr
    assert "/etc/letsencrypt/live/mx1.example.org is NOT deployed" in result.stderr
    assert not (tmp_path / "calls").exists()


def test_hook_refuses_to_run_outside_certbot(tmp_path: Path) -> None:
    result = run_hook(tmp_path, {})
    assert result.returncode == 2
    assert "RENEWED_LINEAGE is not set" in result.stderr
    assert not (tmp_path / "calls").exists()


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_service_is_a_hardened_oneshot_that_can_still_do_its_job() -> None:
    service = unit(SERVICE)["Service"]
    assert service["Type"] == "oneshot"
    assert service["ExecStart"].split()[:2] == ["/usr/local/bin/certman", "run"]
    assert service["ProtectSystem"] == "strict"
    writable = {p.lstrip("-") for p in service["ReadWritePaths"].split()}
    # certman's files + main.cf (postconf -e), its state, and what postfix reload touches.
    assert {"/etc/postfix", "/var/lib/certman", "/var/spool/postfix"} <= writable
    assert service["NoNewPrivileges"] == "true"
    assert "75" in service["SuccessExitStatus"].split()  # lock held / retry later
    assert service["KillMode"] == "process"  # the detached DH generator outlives the run


def _seconds(text: str) -> int:
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)\s*([a-z]+)?", text.strip())
    assert match, text
    return int(match.group(1)) * units[match.group(2) or "s"]


def test_timer_fires_every_15_minutes_with_jitter_and_catches_up() -> None:
    timer = unit(TIMER)["Timer"]
    assert timer["OnCalendar"] == "*:00/15"
    assert 0 < _seconds(timer["RandomizedDelaySec"]) < 15 * 60
    assert timer["Persistent"] == "true"
    assert unit(TIMER)["Install"]["WantedBy"] == "timers.target"


def cron_jobs() -> list[list[str]]:
    jobs = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        jobs.append(line.split(None, 6))
    return jobs


def test_cron_file_runs_certman_as_root_every_15_minutes() -> None:
    jobs = cron_jobs()
    assert len(jobs) == 1
    minute, hour, dom, month, dow, user, command = jobs[0]
    minutes = [int(m) for m in minute.split(",")]
    assert [b - a for a, b in itertools.pairwise(minutes)] == [15, 15, 15]
    assert (hour, dom, month, dow, user) == ("*", "*", "*", "*", "root")
    assert command.startswith("certman run")
    # Nothing piped: a pipe would hide certman's exit status; cron mails only what it prints,
    # and `run --quiet` prints only on failure (docs/operations.md, "Exit codes").
    assert "|" not in command and "--quiet" in command
    assert re.search(r"^MAILTO=", CRON.read_text(), re.M)
    assert "%" not in command  # cron turns % into newlines
    path_line = next(x for x in CRON.read_text().splitlines() if x.startswith("PATH="))
    assert "/usr/sbin" in path_line.split("=", 1)[1].split(":")  # postconf, postfix


def test_cron_file_name_is_one_cron_d_accepts() -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]+", CRON.name)  # run-parts naming rules: no dot


def _postconf(tmp: Path, main_cf: str) -> subprocess.CompletedProcess[str]:
    (tmp / "main.cf").write_text(main_cf)
    (tmp / "master.cf").write_text("")
    # Postfix re-reads a main.cf changed within the last seconds, pausing 0.3 s each time.
    for name in ("main.cf", "master.cf"):
        os.utime(tmp / name, (time.time() - 60, time.time() - 60))
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    return subprocess.run(
        [postconf, "-c", str(tmp), "-n"], capture_output=True, text=True, timeout=10, check=True
    )


def test_postfix_snippet_holds_only_parameters_postfix_knows(tmp_path: Path) -> None:
    text = SNIPPET.read_text()
    everything = re.sub(r"^#(?=[a-z_]|\s{4})", "", text, flags=re.M)
    shipped = _postconf(tmp_path, text)
    assert "warning" not in shipped.stderr, shipped.stderr
    # Switched-on alternatives override the shipped lines (a warning of its own), but every
    # parameter must be one Postfix knows ("unused parameter" otherwise).
    assert "unused parameter" not in _postconf(tmp_path, everything).stderr
    settings = dict(line.split(" = ", 1) for line in shipped.stdout.splitlines())
    assert settings["smtpd_tls_security_level"] == "may"
    assert "dane" in text and "smtp_tls_security_level = dane" in everything


def test_postfix_snippet_points_at_the_files_certman_writes(tmp_path: Path) -> None:
    from test_config_example import rewritten

    from certman.config.load import load_config as load

    mx = load(rewritten(tmp_path)).certificate("mx")
    # store.py: chain-files layout writes <directory>/<certificate>-<key type>.pem
    expected = [str(mx.install.directory / f"{mx.name}-{k}.pem") for k in mx.key_types]
    match = re.search(r"^smtpd_tls_chain_files = (.+)$", SNIPPET.read_text(), re.M)
    assert match is not None
    assert match.group(1).split() == expected


def test_templated_unit_runs_one_configuration_per_instance() -> None:
    """certman@NAME (one configuration per postmulti instance): its own config and state."""
    service = unit(SERVICE.with_name("certman@.service"))["Service"]
    assert service["ExecStart"].split()[:4] == [
        "/usr/local/bin/certman",
        "--config",
        "/etc/certman/%i.toml",
        "run",
    ]
    assert service["StateDirectory"] == "certman/%i"
    writable = {p.lstrip("-") for p in service["ReadWritePaths"].split()}
    assert {"/etc/postfix", "/etc/postfix-%i", "/var/lib/certman"} <= writable
    timer = unit(TIMER.with_name("certman@.timer"))
    assert timer["Timer"]["OnCalendar"] == unit(TIMER)["Timer"]["OnCalendar"]
