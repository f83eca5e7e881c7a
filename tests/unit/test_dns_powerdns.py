"""powerdns options and how API failures read (the API itself: tests/integration)."""

from __future__ import annotations

import io
import urllib.error
from email.message import Message
from pathlib import Path

import pytest

from certman.config.toml import Section
from certman.dns.provider import ProviderContext
from certman.dns.providers.powerdns import PowerDnsOptions, PowerDnsProvider, _http_error
from certman.errors import ConfigError


def parse(data: dict[str, object]) -> PowerDnsOptions:
    section = Section(Path("/etc/certman/certman.toml"), "dns.pdns", data)
    options = PowerDnsProvider.parse_options(section)
    section.finish()
    return options


def test_options_take_the_key_from_a_file_and_never_show_it(tmp_path: Path) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("s3cr3t-api-key\n")
    key_file.chmod(0o600)
    options = parse({"api_url": "http://127.0.0.1:8081/api/v1/", "api_key_file": str(key_file)})
    assert options.api_url == "http://127.0.0.1:8081"
    assert options.api_key == "s3cr3t-api-key" and options.server_id == "localhost"
    provider = PowerDnsProvider("pdns", options, ProviderContext())
    assert "s3cr3t" not in repr(options) and "s3cr3t" not in repr(provider)


def test_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"dns\.pdns\.api_url: expected an http:// or https"):
        parse({"api_url": "127.0.0.1:8081", "api_key_env": "X"})
    with pytest.raises(ConfigError, match=r"dns\.pdns\.api_key_file: missing required key"):
        parse({"api_url": "http://127.0.0.1:8081"})
    monkeypatch.setenv("PDNS_KEY", "k")
    options = parse(
        {"api_url": "https://pdns", "api_key_env": "PDNS_KEY", "zone": "Example.com", "timeout": 5}
    )
    assert (options.zone, options.timeout, options.api_key_source) == (
        "example.com",
        5.0,
        "env:PDNS_KEY",
    )


def http_error(code: int, body: bytes) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x", code, "Reason", Message(), io.BytesIO(body))


@pytest.mark.parametrize(
    ("code", "body", "text"),
    [
        (401, b"Unauthorized", "API key rejected (HTTP 401)"),
        (422, b'{"error": "Record x./TLSA \'3 1 1\':\\n Parsing failed"}', "HTTP 422: Record"),
        (404, b"", "HTTP 404: server_id or zone not found"),
        (500, b"not json", "HTTP 500: Reason"),
    ],
)
def test_api_failures_read_as_one_line(code: int, body: bytes, text: str) -> None:
    message = _http_error(http_error(code, body))
    assert message.startswith(text) and "\n" not in message
