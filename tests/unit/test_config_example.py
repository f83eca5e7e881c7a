"""contrib/certman.toml.example must never drift from the parser.

The example is loaded as shipped (its /etc/certman secret files pointed at temp files through a
rewritten copy) and again with every ``#key = value`` line switched on. Every key the parser reads
must appear in it, and every active key it shows for a default must show that default.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certman.config.load import load_config as load
from certman.config.schema import Challenge, Config, Layout, TlsaParams
from certman.config.toml import Section
from certman.model import KeyType

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "certman.toml.example"

# Found in tsig-keygen's output format; the secret is a throwaway value.
TSIG_KEY = (
    'key "certman-key" {\n\talgorithm hmac-sha256;\n'
    '\tsecret "XUnvVcYlSyKVcI5iSHnBwEsz9Ohmn2qvuR2Mgkh/ZfA=";\n};\n'
)

# Active keys that deliberately show a value other than the default (the rest must be defaults).
NOT_DEFAULT = {
    "acme.email",
    "dns.primary.type",
    "dns.primary.server",
    "dns.primary.zone",
    "dns.primary.tsig_key_file",
    "certificates.mx.domains",
    "dhparams.mode",
    "dhparams.postfix_parameter",
}

# Keys that exclude a key the example switches on, so they are shown only in a prose comment.
EXCLUSIVE = {"certificates.*.http.webroot": 'webroot = "/var/www/html"'}

_SWITCHED_OFF = re.compile(r"^#(?=[\[\"A-Za-z_])", re.M)


def rewritten(tmp: Path, *, everything: bool = False) -> Path:
    """A copy of the example whose /etc/certman files live in ``tmp``; optionally all keys on."""
    secrets = tmp / "etc-certman"
    secrets.mkdir(exist_ok=True)
    (secrets / "tsig.key").write_text(TSIG_KEY)
    (secrets / "tsig.key").chmod(0o600)
    for name in ("eab.key", "pdns-api.key"):
        (secrets / name).write_text("c2VjcmV0LXZhbHVl\n")
        (secrets / name).chmod(0o600)
    for name in ("private-ca.pem", "aws-ca.pem", "pdns-ca.pem"):
        (secrets / name).write_text("-----BEGIN CERTIFICATE-----\n")
    text = EXAMPLE.read_text(encoding="utf-8").replace("/etc/certman/", f"{secrets}/")
    if everything:
        text = _SWITCHED_OFF.sub("", text)
    path = tmp / ("all.toml" if everything else "certman.toml")
    path.write_text(text, encoding="utf-8")
    return path


def test_example_loads_as_shipped(tmp_path: Path) -> None:
    config = load(rewritten(tmp_path))
    assert list(config.providers) == ["primary"]
    primary = config.providers["primary"]
    assert primary.type == "rfc2136"
    assert primary.options.zone == "example.org"
    assert primary.options.tsig.name == "certman-key"
    assert primary.options.tsig.algorithm == "hmac-sha256"
    mx = config.certificate("mx")
    assert mx.domains == ("mx1.example.org",)
    assert mx.key_types == (KeyType.ECDSA_P256,)
    assert mx.challenge is Challenge.DNS01
    assert mx.dane is not None
    assert mx.dane.tlsa_names() == ["_25._tcp.mx1.example.org"]
    assert mx.dane.records == (TlsaParams(3, 1, 1),)
    assert mx.dane.provider == "primary"
    assert mx.install.layout is Layout.CHAIN_FILES
    assert mx.install.directory == Path("/etc/postfix/certman")
    assert config.acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert [(f.path.name, f.bits) for f in config.dhparams.files] == [
        ("dh2048.pem", 2048),
        ("dh4096.pem", 4096),
    ]
    assert list(config.certificates) == ["mx"]


def test_example_loads_with_every_alternative_switched_on(tmp_path: Path) -> None:
    config = load(rewritten(tmp_path, everything=True))
    assert {name: p.type for name, p in config.providers.items()} == {
        "primary": "rfc2136",
        "aws": "route53",
        "pdns": "powerdns",
        "script": "exec",
    }
    assert list(config.certificates) == ["mx", "mx2", "submission"]
    mx2 = config.certificate("mx2")
    assert mx2.key_types == (KeyType.ECDSA_P256, KeyType.RSA2048)
    assert mx2.install.layout is Layout.KEY_CERT
    submission = config.certificate("submission")
    assert submission.challenge is Challenge.HTTP01
    assert submission.http is not None
    assert submission.dane is not None
    assert submission.dane.tlsa_names() == [
        "_465._tcp.mail.example.org",
        "_587._tcp.mail.example.org",
    ]
    assert config.acme.eab is not None
    assert config.certificate("mx").provider_for("mx1.example.net") == "aws"


def _normal(key_path: str) -> str:
    """One name per schema key: any certificate, any zone, any array index."""
    key_path = re.sub(r"^certificates\.[^.]+\.", "certificates.*.", key_path)
    key_path = re.sub(r"\.zones\..+$", ".zones.*", key_path)
    key_path = re.sub(r"\[\d+\]", "[]", key_path)
    return re.sub(r"_env$", "_file", key_path)  # a secret is shown once, as NAME_file


def _flatten(data: object, prefix: str = "") -> set[str]:
    if isinstance(data, list) and data and all(isinstance(i, dict) for i in data):
        return set().union(*(_flatten(item, f"{prefix}[]") for item in data))
    if not isinstance(data, dict):
        return {prefix}
    keys = {f"{prefix}.{k}" if prefix else k for k in data}
    for key, value in data.items():
        keys |= _flatten(value, f"{prefix}.{key}" if prefix else key)
    return keys


def test_example_shows_every_key_the_parser_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    read: set[str] = set()
    finish = Section.finish

    def recording_finish(self: Section) -> None:
        read.update(self.key_path(key) for key in self._seen)
        finish(self)

    monkeypatch.setattr(Section, "finish", recording_finish)
    path = rewritten(tmp_path, everything=True)
    load(path)
    shown = {_normal(k) for k in _flatten(tomllib.loads(path.read_text()))}
    for key_path, prose in EXCLUSIVE.items():  # shown in a comment, as it cannot be switched on
        assert f"#   {prose}" in EXAMPLE.read_text(), key_path
        shown.add(key_path)
    missing = sorted({_normal(k) for k in read} - shown)
    assert not missing, f"keys the parser reads but the example does not show: {missing}"


def _active_keys(text: str) -> list[tuple[int, str]]:
    """(line index, key path) of every active ``key = value`` line outside [[arrays]]."""
    table: str | None = ""
    found = []
    for index, line in enumerate(text.splitlines()):
        header = re.match(r"^\[([^\[\]]+)\]", line)
        if header:
            table = header.group(1)
        elif line.startswith("[["):
            table = None
        key = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if key and table is not None:
            found.append((index, f"{table}.{key.group(1)}"))
    return found


def test_example_values_marked_as_defaults_are_the_defaults(tmp_path: Path) -> None:
    path = rewritten(tmp_path)
    text = path.read_text()
    baseline = load(path)
    checked = 0
    for index, key_path in _active_keys(text):
        if key_path in NOT_DEFAULT:
            continue
        lines = text.splitlines()
        del lines[index]
        path.write_text("\n".join(lines) + "\n")
        assert load(path) == baseline, f"{key_path} in the example is not its default"
        checked += 1
    assert checked >= 30


def test_example_with_defaults_differs_from_minimal(tmp_path: Path) -> None:
    """The NOT_DEFAULT keys really are settings: dropping one changes the result or fails."""
    path = rewritten(tmp_path)
    text = path.read_text()
    baseline: Config = load(path)
    for index, key_path in _active_keys(text):
        if key_path not in NOT_DEFAULT:
            continue
        lines = text.splitlines()
        del lines[index]
        path.write_text("\n".join(lines) + "\n")
        try:
            changed = load(path) != baseline
        except Exception:  # a required key: the parser refuses the file
            changed = True
        assert changed, f"{key_path} shows its default; remove it from NOT_DEFAULT"
