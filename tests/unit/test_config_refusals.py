"""What the config reader refuses because it cannot work or is unsafe (issue 10, defects 5-7):
non-finite numbers, impossible or dangerous paths, files other users could change or read,
a FIFO, a byte order mark, a config that manages nothing. One line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_config_support import TEST_PROVIDER, assert_config_error, install_test_provider

from certman.config.load import load_config as load
from certman.errors import ConfigError

PROVIDER = f'[dns.main]\ntype = "{TEST_PROVIDER}"\n'
CERT = '[certificates.mx]\ndomains = ["mx1.example.org"]\n'
DANE = "[certificates.mx.dane]\n"


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    install_test_provider(tmp_path, monkeypatch)
    return tmp_path


def write(tmp: Path, text: str) -> Path:
    path = tmp / "certman.toml"
    path.write_text(text.replace("@TMP@", str(tmp)), encoding="utf-8")
    return path


def refused(path: Path, key: str | None, *fragments: str) -> None:
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(ConfigError) as error:
        load(path)
    assert_config_error(error, path, key, *fragments)
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing written


NUMBERS = [
    ("margin", DANE, "certificates.mx.dane.margin"),
    ("timeout", "[propagation]\n", "propagation.timeout"),
    ("interval", "[propagation]\n", "propagation.interval"),
    ("query_timeout", "[propagation]\n", "propagation.query_timeout"),
    ("min_wait", "[propagation]\n", "propagation.min_wait"),
    ("timeout", "[acme]\n", "acme.timeout"),
    ("renew_fraction", "", "certificates.mx.renew_fraction"),
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan", "-0.0"])
@pytest.mark.parametrize(("key", "table", "where"), NUMBERS, ids=[n[2] for n in NUMBERS])
def test_non_finite_and_negative_zero_numbers_are_refused(
    tmp: Path, key: str, table: str, where: str, value: str
) -> None:
    if table.startswith("[certificates") or not table:
        text = PROVIDER + CERT + (f"{key} = {value}\n" if not table else "") + table
        text += f"{key} = {value}\n" if table else ""
    else:
        text = PROVIDER + CERT + table + f"{key} = {value}\n"
    expected = "negative zero" if value == "-0.0" else "expected a finite number"
    refused(write(tmp, text), where, expected)


def test_state_dir_that_is_a_regular_file_is_refused(tmp: Path) -> None:
    (tmp / "afile").write_text("x")
    text = f'[certman]\nstate_dir = "{tmp}/afile"\n' + PROVIDER + CERT
    refused(write(tmp, text), "certman.state_dir", "not a directory")


def test_state_dir_below_a_regular_file_is_refused(tmp: Path) -> None:
    (tmp / "afile").write_text("x")
    text = f'[certman]\nstate_dir = "{tmp}/afile/state"\n' + PROVIDER + CERT
    refused(write(tmp, text), "certman.state_dir", "is below", "not a directory")


@pytest.mark.parametrize("where", ["/proc/self/certman", "/sys/certman", "/dev/shm/x"])
def test_state_dir_on_a_pseudo_filesystem_is_refused(tmp: Path, where: str) -> None:
    text = f'[certman]\nstate_dir = "{where}"\n' + PROVIDER + CERT
    refused(write(tmp, text), "certman.state_dir", "holds no real files")


@pytest.mark.parametrize("where", ["/", "/etc", "/var", "/usr/", "/etc/../etc"])
def test_state_dir_that_is_a_system_directory_is_refused(tmp: Path, where: str) -> None:
    text = f'[certman]\nstate_dir = "{where}"\n' + PROVIDER + CERT
    refused(write(tmp, text), "certman.state_dir", "system directory")


@pytest.mark.parametrize("where", ["/etc", "/", "/usr/lib/.."])
def test_postfix_install_directory_that_is_a_system_directory_is_refused(
    tmp: Path, where: str
) -> None:
    text = PROVIDER + CERT + f'[certificates.mx.postfix]\ndirectory = "{where}"\n'
    refused(write(tmp, text), "certificates.mx.postfix.directory", "system directory")


def test_missing_postfix_config_dir_is_refused(tmp: Path) -> None:
    text = PROVIDER + CERT + f'[postfix]\nconfig_dir = "{tmp}/no-such-postfix"\n'
    refused(write(tmp, text), "postfix.config_dir", "does not exist")


@pytest.mark.parametrize("program", ["/usr/sbin/no-such-postconf", "no-such-postconf"])
def test_missing_postconf_is_refused(tmp: Path, program: str) -> None:
    text = PROVIDER + CERT + f'[postfix]\npostconf = "{program}"\n'
    refused(write(tmp, text), "postfix.postconf", "not found")


def test_missing_postfix_program_is_refused_unless_a_reload_command_is_given(tmp: Path) -> None:
    text = PROVIDER + CERT + '[postfix]\npostfix = "/nonexistent/postfix"\n'
    refused(write(tmp, text), "postfix.postfix", "not found")
    ok = text + 'reload_command = ["/bin/true"]\n'
    assert load(write(tmp, ok)).postfix.reload_command == ("/bin/true",)


@pytest.mark.parametrize(
    ("table", "key", "where"),
    [
        ("[certman]\n", "state_dir", "certman.state_dir"),
        ("[acme]\n", "account_key", "acme.account_key"),
        ("[postfix]\n", "config_dir", "postfix.config_dir"),
    ],
)
def test_a_nul_byte_in_a_path_is_refused(tmp: Path, table: str, key: str, where: str) -> None:
    text = table + f'{key} = "/var/lib/cert\\u0000man"\n' + PROVIDER + CERT
    refused(write(tmp, text), where, "NUL byte")


def test_a_fifo_as_config_file_is_refused_without_hanging(tmp: Path) -> None:
    fifo = tmp / "certman.toml"
    os.mkfifo(fifo)
    code = (
        "import sys; from certman.config.load import load_config; from pathlib import Path\n"
        "from certman.errors import ConfigError\n"
        "try:\n    load_config(Path(sys.argv[1]))\nexcept ConfigError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(fifo)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert f"{fifo}: cannot read config: not a regular file" in done.stdout


def test_a_byte_order_mark_gets_a_clear_message(tmp: Path) -> None:
    path = tmp / "certman.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (PROVIDER + CERT).encode())
    refused(path, None, "byte order mark", "without it")


@pytest.mark.parametrize("text", ["", "# nothing here\n", "[certman]\n", PROVIDER])
def test_a_config_that_manages_nothing_is_refused(tmp: Path, text: str) -> None:
    refused(write(tmp, text), None, "manages nothing")


def test_a_world_writable_config_is_refused(tmp: Path) -> None:
    path = write(tmp, PROVIDER + CERT)
    path.chmod(0o666)
    refused(path, None, "writable by every user", "chmod o-w")
    path.chmod(0o664)  # group-writable is the operator's choice (a root-only group, say)
    assert load(path).certificates


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_secret_file_other_users_can_read_or_change_is_refused(tmp: Path, mode: int) -> None:
    secret = tmp / "eab.key"
    secret.write_text("c2VjcmV0\n")
    secret.chmod(mode)
    text = PROVIDER + CERT + f'[acme.eab]\nkid = "k"\nhmac_key_file = "{secret}"\n'
    refused(write(tmp, text), "acme.eab.hmac_key_file", f"mode {mode:04o}", "chmod 600")
    secret.chmod(0o600)
    assert load(write(tmp, text)).acme.eab is not None


def test_the_valid_base_config_loads(tmp: Path) -> None:
    """The cases above differ from this one only in what they break."""
    assert load(write(tmp, PROVIDER + CERT + DANE + "margin = 0.0\n")).certificates
