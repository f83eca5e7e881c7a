"""The exec provider's protocol with a command: argv, environment, stdin, stdout, exit status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from certman.config.toml import Section
from certman.dns.provider import ProviderContext, RRset
from certman.dns.providers.exec import ExecOptions, ExecProvider
from certman.errors import ConfigError, ConflictError, DnsError

NAME = "_acme-challenge.example.com"


def script(tmp_path: Path, body: str) -> ExecProvider:
    """A provider running ``body`` (Python) with the request in ``request`` and a dump file."""
    path = tmp_path / "hook.py"
    path.write_text(
        "import json, os, sys\n"
        "request = json.load(sys.stdin)\n"
        f"dump = {str(tmp_path / 'calls.jsonl')!r}\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('CERTMAN_')}\n"
        "call = {'argv': sys.argv[1:], 'env': env, 'in': request}\n"
        "open(dump, 'a').write(json.dumps(call) + '\\n')\n" + body
    )
    options = ExecOptions((sys.executable, str(path), "a b; rm -rf /", "$HOME"), "example.com", 5)
    return ExecProvider("hook", options, ProviderContext())


def calls(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_replace_passes_the_rrset_in_environment_and_json(tmp_path: Path) -> None:
    provider = script(
        tmp_path,
        "if request['action'] == 'read': print('null')\nelse: print(json.dumps({'serial': 42}))\n",
    )
    rrset = RRset.of(NAME, "TXT", 60, ['"token"'])
    result = provider.replace(rrset, expected=None)
    assert (result.zone, result.serial) == ("example.com", 42)
    read, write = calls(tmp_path)
    assert read["env"] == {
        "CERTMAN_ACTION": "read",
        "CERTMAN_NAME": NAME,
        "CERTMAN_TYPE": "TXT",
        "CERTMAN_TTL": "",
        "CERTMAN_ZONE": "example.com",
    }
    assert write["argv"] == ["a b; rm -rf /", "$HOME"]  # argv, never a shell
    assert write["env"]["CERTMAN_ACTION"] == "replace"  # type: ignore[index]
    assert write["env"]["CERTMAN_TTL"] == "60"  # type: ignore[index]
    assert write["in"] == {
        "action": "replace",
        "name": NAME,
        "type": "TXT",
        "ttl": 60,
        "rdatas": ['"token"'],
        "zone": "example.com",
        "expected": None,
    }


def test_read_output_becomes_an_rrset(tmp_path: Path) -> None:
    provider = script(tmp_path, "print(json.dumps({'ttl': 30, 'rdatas': ['\"a\"', '\"b\"']}))\n")
    assert provider.read(NAME, "txt") == RRset.of(NAME, "TXT", 30, ['"a"', '"b"'])


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("not json", 'expected {"ttl": N, "rdatas": [...]} or null on stdout, got \'not json\''),
        ('{"ttl": 30}', "or null on stdout"),
        ('{"ttl": 30, "rdatas": ["3 1 1 zz"]}', "printed an invalid record"),
    ],
)
def test_bad_read_output_is_a_clear_error(tmp_path: Path, output: str, message: str) -> None:
    provider = script(tmp_path, f"print({output!r})\n")
    with pytest.raises(DnsError) as caught:
        provider.read(NAME, "TLSA" if "3 1 1" in output else "TXT")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_failure_reports_the_last_stderr_line_and_exit_status(tmp_path: Path) -> None:
    provider = script(
        tmp_path,
        "print('detail', file=sys.stderr)\nprint('  denied  \\n', file=sys.stderr)\nsys.exit(7)\n",
    )
    with pytest.raises(DnsError) as caught:
        provider.read(NAME, "TXT")
    assert str(caught.value) == (
        f"exec provider 'hook' ({sys.executable}): read {NAME} TXT: exit status 7: denied"
    )


def test_exit_status_3_is_a_conflict(tmp_path: Path) -> None:
    provider = script(
        tmp_path,
        "if request['action'] == 'read': print('null')\n"
        "else: print('lost', file=sys.stderr); sys.exit(3)\n",
    )
    with pytest.raises(ConflictError, match="conflict reported by the command: lost"):
        provider.replace(RRset.of(NAME, "TXT", 60, ['"x"']))


def test_a_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    options = ExecOptions((str(tmp_path / "nope"),), "example.com")
    with pytest.raises(DnsError, match="cannot run the command: No such file or directory"):
        ExecProvider("hook", options, ProviderContext()).read(NAME, "TXT")


def test_names_outside_the_zone_are_refused_before_running_anything(tmp_path: Path) -> None:
    provider = script(tmp_path, "print('null')\n")
    with pytest.raises(DnsError, match=r"name is not in zone example\.com"):
        provider.read("_acme-challenge.example.org", "TXT")
    assert not (tmp_path / "calls.jsonl").exists()


def test_options_want_an_absolute_program() -> None:
    section = Section(Path("/etc/certman/certman.toml"), "dns.hook", {"command": ["dns-hook"]})
    with pytest.raises(ConfigError, match=r"dns\.hook\.command: expected an absolute program"):
        ExecProvider.parse_options(section)
    section = Section(
        Path("/etc/certman/certman.toml"), "dns.hook", {"command": ["/usr/local/bin/h", "x"]}
    )
    assert ExecProvider.parse_options(section) == ExecOptions(("/usr/local/bin/h", "x"), None, 30.0)
