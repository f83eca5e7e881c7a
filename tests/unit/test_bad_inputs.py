"""Bad inputs beyond the config file (issue 10): TSIG key files, what certbot hands the deploy
hook, state files, the command line. Each is refused with a one-line error naming what is
wrong, changes nothing on disk, and never shows a secret."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from certgen import issue, make_pki

from certman.cli.main import main
from certman.dns.providers.rfc2136 import parse_tsig_key
from certman.errors import CertmanError
from certman.integrations.certbot import check_valid, lineage_from, read_files
from certman.keys import private_key_pem
from certman.lifecycle.state import State, to_json
from certman.lifecycle.statefile import CertDir
from certman.model import KeyType

SECRET = "3bHXNP3SFdrqMxFNCVjFOqJ1evUQfgsAyXXvONVc1Rg="
OLD = "b2xkLXNlY3JldC12YWx1ZS10aGF0LW11c3Qtbm90LWJlLXVzZWQ="

# -- TSIG key files -------------------------------------------------------------------------------

TSIG_BAD = {
    "empty": ("", "expected a BIND key block"),
    "garbage": ("hello world", "expected a BIND key block"),
    "no-secret": ('key "k" { algorithm hmac-sha256; };', "lacks an algorithm or secret"),
    "no-algorithm": (f'key "k" {{ secret "{SECRET}"; }};', "lacks an algorithm or secret"),
    "bad-algorithm": (
        f'key "k" {{ algorithm hmac-md4; secret "{SECRET}"; }};',
        "algorithm 'hmac-md4' not supported",
    ),
    "bad-base64": (
        'key "k" { algorithm hmac-sha256; secret "not base64!!"; };',
        "not valid base64",
    ),
    "two-keys": (
        f'key "a" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
        f'key "b" {{ algorithm hmac-sha256; secret "{SECRET}"; }};',
        "several keys",
    ),
    "unclosed-block-comment": (
        f'/* generated\nkey "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};',
        "comment is not closed",
    ),
    "only-a-comment": (
        f'/* key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }}; */',
        "expected",
    ),
    "y-form-too-many-colons": (f"hmac-sha256:k:{SECRET}:extra", "expected a BIND key block"),
    "y-form-bad-secret": ("hmac-sha256:k:%%%%", "not valid base64"),
    "hash-commented-secret-only": (
        f'key "k" {{ algorithm hmac-sha256; # secret "{SECRET}";\n}};',
        "lacks an algorithm or secret",
    ),
}


@pytest.mark.parametrize("text, expected", TSIG_BAD.values(), ids=TSIG_BAD.keys())
def test_bad_tsig_key_files_are_refused_without_showing_the_secret(
    text: str, expected: str
) -> None:
    with pytest.raises(ValueError) as error:
        parse_tsig_key(text, "file:/etc/certman/tsig.key")
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert SECRET not in message and OLD not in message


def test_block_comments_are_comments_even_around_a_secret() -> None:
    """named.conf's /* */ form: a commented-out old secret is never the one used."""
    text = (
        "/* rotated 2026-01-01; the old key was:\n"
        f'key "certman" {{ algorithm hmac-sha512; secret "{OLD}"; }};\n*/\n'
        'key "certman" { /* the new one */\n'
        f'\talgorithm hmac-sha256; /* secret "{OLD}"; */\n'
        f'\tsecret "{SECRET}"; // and // "quoted" trailing\n'
        "};\n"
    )
    key = parse_tsig_key(text, "file:/k")
    assert (key.name, key.algorithm, key.secret) == ("certman", "hmac-sha256", SECRET)


# -- what certbot hands the deploy hook -----------------------------------------------------------


def lineage(tmp_path: Path, key: bytes, chain: bytes) -> Path:
    live = tmp_path / "live" / "mx1.example.org"
    live.mkdir(parents=True)
    (live / "privkey.pem").write_bytes(key)
    (live / "fullchain.pem").write_bytes(chain)
    return live


def test_truncated_certificate_pem_is_refused(tmp_path: Path) -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.example.org")
    chain = pki.fullchain_pem(leaf)
    live = lineage(tmp_path, leaf.key_pem, chain[: len(chain) // 3])
    with pytest.raises(CertmanError, match=r"fullchain\.pem: no valid PEM certificate"):
        read_files(live)


def test_truncated_key_pem_is_refused_without_its_content(tmp_path: Path) -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.example.org")
    truncated = leaf.key_pem[: len(leaf.key_pem) // 2]
    live = lineage(tmp_path, truncated, pki.fullchain_pem(leaf))
    with pytest.raises(CertmanError) as error:
        read_files(live)
    assert "privkey.pem: not a usable PEM private key" in str(error.value)
    body = truncated.decode().splitlines()[1]
    assert body not in str(error.value)


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    pki = make_pki()
    leaf, other = pki.leaf("mx1.example.org"), pki.leaf("mx1.example.org")
    live = lineage(tmp_path, other.key_pem, pki.fullchain_pem(leaf))
    with pytest.raises(CertmanError, match="the certificate does not match"):
        read_files(live)


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    pki = make_pki()
    leaf = issue("mx1.example.org", issuer=pki.intermediate, days=0)
    files = read_files(lineage(tmp_path, leaf.key_pem, pki.fullchain_pem(leaf)))
    with pytest.raises(CertmanError, match="expired at"):
        check_valid(files, time.time() + 60)


def test_a_certificate_not_yet_valid_is_refused(tmp_path: Path) -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.example.org")
    files = read_files(lineage(tmp_path, leaf.key_pem, pki.fullchain_pem(leaf)))
    check_valid(files, time.time())
    with pytest.raises(CertmanError, match="valid only from"):
        check_valid(files, files.not_before - 3600)


def test_a_certificate_with_no_dns_names_is_refused(tmp_path: Path) -> None:
    pki = make_pki()
    ca_like = issue("not a host", issuer=pki.intermediate, ca=True)
    live = lineage(tmp_path, ca_like.key_pem, ca_like.cert_pem)
    with pytest.raises(CertmanError, match="names no DNS names"):
        lineage_from(str(live), {})


def test_a_private_key_file_holding_a_certificate_is_refused(tmp_path: Path) -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.example.org")
    live = lineage(tmp_path, leaf.cert_pem, pki.fullchain_pem(leaf))
    with pytest.raises(CertmanError, match=r"privkey\.pem: not a usable PEM private key"):
        read_files(live)


def test_an_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pki = make_pki()
    leaf = pki.leaf("mx1.example.org")
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    )
    live = lineage(tmp_path, encrypted, pki.fullchain_pem(leaf))
    with pytest.raises(CertmanError, match="not a usable PEM private key"):
        read_files(live)
    assert private_key_pem(leaf.key) != encrypted


@pytest.mark.parametrize(
    "environ",
    [{}, {"RENEWED_LINEAGE": "/etc/letsencrypt/live/x"}, {"RENEWED_DOMAINS": "mx1.example.org"}],
    ids=["nothing", "no-domains", "no-lineage"],
)
def test_the_hook_without_certbots_variables_says_how_to_run_it(environ: dict[str, str]) -> None:
    with pytest.raises(CertmanError, match="RENEWED_LINEAGE and RENEWED_DOMAINS must be set"):
        lineage_from(None, environ)


# -- state files ----------------------------------------------------------------------------------


def good_state() -> dict[str, object]:
    return to_json(State(name="mx"))


def mutate(**changes: object) -> str:
    data = good_state()
    data.update(changes)
    return json.dumps(data)


STATE_BAD = {
    "empty": ("", "corrupt state file"),
    "truncated": (mutate()[:40], "corrupt state file"),
    "not-json": ("phase = steady\n", "corrupt state file"),
    "a-list": ("[1, 2]", "corrupt state file"),
    "nan-time": (mutate().replace('"retry_after": null', '"retry_after": NaN'), "NaN"),
    "infinite-time": (
        mutate().replace('"renew_after": null', '"renew_after": Infinity'),
        "Infinity",
    ),
    "unknown-schema": (mutate(schema=99), "unsupported state schema 99"),
    "no-schema": (json.dumps({"name": "mx"}), "unsupported state schema None"),
    "hand-edited-phase": (mutate(phase="swap-now"), "corrupt state file"),
    "hand-edited-operation": (mutate(operation="yolo"), "corrupt state file"),
    "time-as-text": (mutate(retry_after="tomorrow"), "retry_after: expected a number"),
    "time-as-bool": (mutate(renew_after=True), "renew_after: expected a number"),
    "ttl-as-text": (
        mutate(tlsa={**good_state()["tlsa"], "ttl_before": "3600"}),  # type: ignore[dict-item]
        "tlsa.ttl_before: expected a number",
    ),
    "missing-field": (json.dumps({k: v for k, v in good_state().items() if k != "certs"}), "certs"),
    "unknown-key-type": (
        mutate(current={"x": {"id": "k", "key_type": "dsa", "spki_sha256": "a", "created": 1}}),
        "corrupt state file",
    ),
    "binary": (b"\xff\xfe\x00\x01".decode("latin-1"), "corrupt state file"),
}


@pytest.mark.parametrize("text, expected", STATE_BAD.values(), ids=STATE_BAD.keys())
def test_a_bad_state_file_is_refused_with_one_line_and_left_as_it_is(
    tmp_path: Path, text: str, expected: str
) -> None:
    cdir = CertDir.of(tmp_path, "mx")
    cdir.root.mkdir(parents=True)
    cdir.state_file.write_text(text, encoding="latin-1")
    before = cdir.state_file.read_bytes()
    with pytest.raises(CertmanError) as error:
        cdir.load("mx")
    message = str(error.value)
    assert message.startswith(str(cdir.state_file)) and "\n" not in message
    assert expected in message, message
    assert cdir.state_file.read_bytes() == before


# -- the command line -----------------------------------------------------------------------------


ARGV_BAD = {
    "no-command": [],
    "unknown-command": ["frobnicate"],
    "issue-without-name": ["issue"],
    "rollover-without-name": ["rollover"],
    "max-wait-nan": ["run", "--max-wait", "nan"],
    "max-wait-inf": ["run", "--max-wait", "inf"],
    "max-wait-negative": ["run", "--max-wait", "-5"],
    "max-wait-text": ["run", "--max-wait", "soon"],
    "unknown-option": ["run", "--now"],
    "config-subcommand-missing": ["config"],
    "account-bad-key-type": ["account", "rollover", "--key-type", "dsa1024"],
    "hook-unknown": ["hook", "postfix"],
}


@pytest.mark.parametrize("argv", ARGV_BAD.values(), ids=ARGV_BAD.keys())
def test_bad_arguments_exit_2_with_usage_and_touch_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CERTMAN_CONFIG", str(tmp_path / "none.toml"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "config", ["/nonexistent/certman.toml", "/etc/certman\0.toml", "/dev/null", "/"]
)
def test_a_bad_config_argument_is_one_line_and_exit_2(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", config, "status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "certman: " in err[0] and "cannot read config" in err[0]


def test_keytype_argument_choices_match_the_model() -> None:
    assert {k.value for k in KeyType} >= {"ecdsa-p256", "rsa2048"}
