"""The wheel carries what an operator installs: ``pipx install certman`` needs no git checkout.

Builds the wheel from this tree, installs it (without dependencies: ``certman contrib`` and
``--version`` import none of them) into a fresh virtual environment, and asks the installed
``certman`` for every shipped file.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``certman`` script of a fresh venv with only the wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("certman-*.whl")
    venv.create(work / "venv", with_pip=False)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(work / "venv" / "bin" / "python"),
         "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        env=CLEAN_ENV,
    )  # fmt: skip
    return work / "venv" / "bin" / "certman"


def run(certman: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(certman), *args], capture_output=True, env=CLEAN_ENV, cwd="/", check=False
    )


def test_installed_certman_reports_its_version(installed: Path) -> None:
    done = run(installed, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("certman 0.")


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("example-config", "contrib/certman.toml.example"),
        ("systemd-service", "contrib/systemd/certman.service"),
        ("systemd-timer", "contrib/systemd/certman.timer"),
        ("systemd-service-instance", "contrib/systemd/certman@.service"),
        ("systemd-timer-instance", "contrib/systemd/certman@.timer"),
        ("cron", "contrib/cron/certman"),
        ("certbot-hook", "hooks/certbot-deploy"),
        ("postfix-snippet", "contrib/postfix/main.cf.snippet"),
    ],
)
def test_every_contrib_file_comes_from_the_wheel_unchanged(
    installed: Path, name: str, source: str
) -> None:
    done = run(installed, "contrib", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (ROOT / source).read_bytes()


def test_contrib_install_writes_the_hook_executable_and_never_overwrites(
    installed: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "certman-hook"
    assert run(installed, "contrib", "certbot-hook", str(dest)).returncode == 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    dest.write_text("operator's own edits\n")
    again = run(installed, "contrib", "certbot-hook", str(dest))
    assert again.returncode == 1
    assert b"exists; not overwritten" in again.stderr
    assert dest.read_text() == "operator's own edits\n"


def test_unknown_contrib_name_is_one_line_and_exit_2(installed: Path) -> None:
    done = run(installed, "contrib", "nginx")
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert "no contrib file named 'nginx'" in done.stderr.decode()
