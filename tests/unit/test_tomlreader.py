"""The strict TOML table reader: typed getters, key paths in errors, secrets, leftover keys."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pytest

from certman.config.toml import Secret, Section, normalize_domain
from certman.errors import ConfigError

FILE = Path("/etc/certman/certman.toml")


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def section(data: dict[str, object], prefix: str = "t") -> Section:
    return Section(FILE, prefix, data)


def error_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


@pytest.mark.parametrize(
    ("given", "wanted"),
    [
        ("MX1.Example.ORG.", "mx1.example.org"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (".".join(["a" * 61] * 4), ".".join(["a" * 61] * 4)),  # 247 octets
    ],
)
def test_normalize_domain_accepts_and_lowercases_host_names(given: str, wanted: str) -> None:
    assert normalize_domain(given) == wanted


@pytest.mark.parametrize(
    "given",
    [
        "",
        ".",
        "localhost",
        "mx1..example",
        "-bad.example",
        "bad-.example",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4),  # 255 octets
        "mx_1.example",
        "mx1.example.org..",
        "*.example.org",
        "mx 1.example",
    ],
)
def test_normalize_domain_rejects_what_is_not_a_host_name(given: str) -> None:
    assert normalize_domain(given) is None


def test_wildcard_and_underscore_labels_need_their_flags() -> None:
    assert normalize_domain("*.Example.org", wildcard=True) == "*.example.org"
    assert normalize_domain("*.org", wildcard=True) is None
    assert normalize_domain("mx.*.example.org", wildcard=True) is None
    assert normalize_domain("_25._tcp.mx1.example.org") is None
    assert normalize_domain("_25._tcp.mx1.example.org", underscore=True) == (
        "_25._tcp.mx1.example.org"
    )


def test_finish_names_the_leftover_key_and_suggests_the_closest() -> None:
    s = section({"port": 25, "hosts": ["a.example"]}, "certificates.mx.dane")
    s.integer("ports", 25)
    s.str_list("hosts")
    message = error_of(s.finish)
    assert message == (
        f"{FILE}: certificates.mx.dane.port: unknown key (did you mean 'ports'?); "
        "valid keys here: hosts, ports"
    )


def test_finish_without_a_close_match_gives_no_suggestion() -> None:
    s = section({"zzz": 1})
    assert error_of(s.finish) == f"{FILE}: t.zzz: unknown key; valid keys here: none"


def test_key_path_quotes_keys_that_are_not_bare() -> None:
    s = section({}, "certificates.mx.zones")
    assert s.key_path("example.org") == 'certificates.mx.zones."example.org"'
    assert s.key_path("domains[3]") == "certificates.mx.zones.domains[3]"
    assert s.key_path('we"ird\nkey') == 'certificates.mx.zones."we\\"ird\\nkey"'
    assert section({}, "").key_path("acme") == "acme"


def test_typed_getters_return_values_and_defaults() -> None:
    s = section({"n": 3, "f": 1, "b": False, "s": "x", "c": "blue", "l": ["a", "b"]})
    assert s.integer("n") == 3
    assert s.number("f") == 1.0
    assert isinstance(s.number("f"), float)
    assert s.boolean("b") is False
    assert s.string("s") == "x"
    assert s.choice("c", Colour) is Colour.BLUE
    assert s.str_list("l") == ["a", "b"]
    assert s.integer("missing", 7) == 7
    assert s.opt_integer("missing") is None
    assert s.opt_string("missing") is None
    assert s.choice("missing", Colour, Colour.RED) is Colour.RED
    assert s.opt_path("missing") is None
    s.finish()


@pytest.mark.parametrize(
    ("data", "getter", "wanted"),
    [
        ({"k": True}, lambda s: s.integer("k"), "t.k: expected an integer, got true/false"),
        ({"k": 1}, lambda s: s.boolean("k"), "t.k: expected true or false, got an integer"),
        ({"k": "1"}, lambda s: s.number("k"), "t.k: expected a number, got a string"),
        ({"k": 1.5}, lambda s: s.integer("k"), "t.k: expected an integer, got a number"),
        ({"k": 9}, lambda s: s.integer("k", high=8), "t.k: expected a value <= 8, got 9"),
        ({"k": "  "}, lambda s: s.string("k"), "t.k: expected a non-empty string"),
        ({"k": ""}, lambda s: s.opt_string("k"), "t.k: expected a non-empty string"),
        ({"k": ["a", 2]}, lambda s: s.str_list("k"), "t.k[1]: expected a non-empty string"),
        ({"k": []}, lambda s: s.int_list("k", low=1, high=2), "t.k: expected a non-empty list"),
        ({"k": "green"}, lambda s: s.choice("k", Colour), "expected one of red, blue, got 'green'"),
        ({"k": 3}, lambda s: s.choice("k", Colour), "t.k: expected one of red, blue, got an int"),
        ({"k": "etc/x"}, lambda s: s.path("k"), "t.k: expected an absolute path, got 'etc/x'"),
        ({"k": 1}, lambda s: s.path("k"), "t.k: expected an absolute path, got an integer"),
        ({}, lambda s: s.string("k"), "t.k: missing required key, expected a string"),
        ({"k": "*.a.example"}, lambda s: s.domain("k"), "expected a concrete host name"),
        ({"k": "a"}, lambda s: s.domain("k", wildcard=True), "expected a fully qualified"),
        ({"k": 1}, lambda s: s.table("k"), "t.k: expected a table, got an integer"),
        ({"k": [1]}, lambda s: s.table_list("k"), "t.k[0]: expected a table, got an integer"),
    ],
)
def test_getter_errors_name_key_and_expectation(
    data: dict[str, object], getter: object, wanted: str
) -> None:
    s = section(data)
    assert callable(getter)
    message = error_of(lambda: getter(s))
    assert message.startswith(f"{FILE}: t.k")
    assert wanted in message


def test_nested_tables_carry_their_key_path() -> None:
    s = section({"dns": {"a": {"type": "x"}, "b": {"type": 1}}}, "")
    names = []
    with pytest.raises(ConfigError, match=r": dns\.b\.type: expected a string, got an integer$"):
        for name, sub in s.tables("dns"):
            names.append(name)
            sub.string("type")
    assert names == ["a", "b"]


def test_table_list_items_are_indexed() -> None:
    s = section({"file": [{"path": "/a"}, {"bits": 1}]}, "dhparams")
    items = s.table_list("file")
    assert [i.prefix for i in items] == ["dhparams.file[0]", "dhparams.file[1]"]
    assert error_of(lambda: items[1].path("path")).endswith(
        "dhparams.file[1].path: missing required key, expected an absolute path"
    )


def test_secret_from_file_is_stripped_and_hidden(tmp_path: Path) -> None:
    secret_file = tmp_path / "tsig.key"
    secret_file.write_text("  s3cr3t\n")
    secret_file.chmod(0o600)
    secret = section({"key_file": str(secret_file)}).secret("key")
    assert secret is not None
    assert secret.value == "s3cr3t"
    assert secret.source == f"file:{secret_file}"
    assert "s3cr3t" not in repr(secret)
    assert "s3cr3t" not in str(secret)


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTMAN_T_TOKEN", "abc")
    secret = section({"token_env": "CERTMAN_T_TOKEN"}).secret("token")
    assert secret == Secret("env:CERTMAN_T_TOKEN", "different values compare equal")
    assert secret is not None
    assert secret.value == "abc"


def test_optional_secret_may_be_absent() -> None:
    assert section({}).secret("token", required=False) is None


def test_inline_secret_is_refused_without_echoing_it() -> None:
    message = error_of(lambda: section({"token": "hunter2"}).secret("token"))
    assert "hunter2" not in message
    assert "t.token: inline secrets are not accepted; use token_file or token_env" in message


def test_inline_secret_name_is_never_offered_as_a_valid_key() -> None:
    s = section({"token_fil": "/x"})
    assert s.secret("token", required=False) is None
    message = error_of(s.finish)
    assert "did you mean 'token_file'?" in message
    assert message.endswith("valid keys here: token_env, token_file")
