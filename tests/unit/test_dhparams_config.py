"""The ``[dhparams]`` section: sizes each mode can produce, refused with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from certman.config.load import parse
from certman.config.schema import DhFile, DhMode
from certman.errors import ConfigError

CONFIG = Path("/etc/certman/certman.toml")


def dh(mode: str, *files: tuple[str, int], **extra: object) -> dict[str, object]:
    return {
        "dhparams": {
            "mode": mode,
            "file": [{"path": path, "bits": bits} for path, bits in files],
            **extra,
        }
    }


def error(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(CONFIG, data)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    return str(caught.value)


def test_published_groups_allow_6144_and_8192_bits() -> None:
    for mode in ("rfc7919", "rfc3526"):
        config = parse(CONFIG, dh(mode, ("/etc/postfix/dh8192.pem", 8192))).dhparams
        assert config.files == (DhFile(Path("/etc/postfix/dh8192.pem"), 8192),)
        assert config.mode is DhMode(mode)


def test_generate_refuses_sizes_whose_search_takes_hours() -> None:
    message = error(dh("generate", ("/etc/postfix/dh8192.pem", 8192)))
    assert message.startswith(f"{CONFIG}: dhparams.file[0].bits: expected 2048, 3072 or 4096")
    assert "6144 and 8192 only with mode rfc7919 or rfc3526" in message


def test_sizes_below_2048_are_refused_as_too_weak_in_every_mode() -> None:
    for mode in ("generate", "rfc7919", "rfc3526", "off"):
        message = error(dh(mode, ("/etc/postfix/dh1024.pem", 1024)))
        assert message == (
            f"{CONFIG}: dhparams.file[0].bits: expected 2048, 3072, 4096, 6144 or 8192, got 1024 "
            "(DH parameters below 2048 bits are refused as too weak)"
        )


def test_a_file_listed_twice_is_refused() -> None:
    message = error(dh("generate", ("/etc/postfix/dh.pem", 2048), ("/etc/postfix/dh.pem", 4096)))
    assert message == f"{CONFIG}: dhparams.file[1]: /etc/postfix/dh.pem is listed twice"


def test_postfix_parameter_must_be_a_main_cf_name() -> None:
    data = dh("rfc7919", ("/etc/postfix/dh.pem", 2048), postfix_parameter="smtpd tls = x")
    assert "dhparams.postfix_parameter: expected a main.cf parameter name" in error(data)


def test_openssl_binary_is_configurable_and_defaults_to_openssl() -> None:
    files = ("/etc/postfix/dh.pem", 2048)
    assert parse(CONFIG, dh("generate", files)).dhparams.openssl == "openssl"
    custom = parse(CONFIG, dh("generate", files, openssl="/opt/ssl/bin/openssl")).dhparams
    assert custom.openssl == "/opt/ssl/bin/openssl"
