"""Property tests of the config reader (hypothesis): whatever the TOML tree holds, reading it
either gives a Config or raises ConfigError, one line naming the file; never anything else.
And a number is accepted exactly when it is finite, in range and not -0.0."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config_support import TEST_PROVIDER, install_test_provider

from certman.config.load import parse
from certman.errors import ConfigError

PATH = Path("/etc/certman/certman.toml")
KEYS = st.sampled_from(
    ["certman", "acme", "dns", "propagation", "postfix", "certificates", "dhparams", "dane",
     "state_dir", "resolvers", "directory", "type", "domains", "hosts", "ttl", "margin",
     "timeout", "interval", "config_dir", "postconf", "mode", "file", "bits", "path", "mx",
     "main", "records", "ports", "key_type", "zones", "email", "retries", "layout", "x"]
)  # fmt: skip
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["/var/lib/x", "/etc", "/proc/1", "mx1.example.org", "3 1 1", TEST_PROVIDER]),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)
    ),
    max_leaves=25,
)


@pytest.fixture(autouse=True)
def _provider(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    install_test_provider(tmp_path_factory.mktemp("provider"), monkeypatch)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=st.dictionaries(KEYS, TREES, max_size=6))
def test_any_tree_gives_a_config_or_a_one_line_config_error(tree: dict[str, object]) -> None:
    try:
        parse(PATH, tree)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{PATH}: ") and "\n" not in message, message
        assert exc.exit_code == 2


BASE = {
    "dns": {"main": {"type": TEST_PROVIDER}},
    "certificates": {"mx": {"domains": ["mx1.example.org"], "dane": {}}},
}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.one_of(st.floats(), st.integers(-(10**9), 10**9)))
def test_margin_is_accepted_exactly_when_finite_non_negative_and_not_minus_zero(
    value: float,
) -> None:
    tree = {
        **BASE,
        "certificates": {"mx": {"domains": ["mx1.example.org"], "dane": {"margin": value}}},
    }
    negative_zero = isinstance(value, float) and value == 0 and math.copysign(1, value) < 0
    ok = math.isfinite(value) and value >= 0 and not negative_zero
    try:
        config = parse(PATH, tree)
    except ConfigError as exc:
        assert not ok, exc
        assert "certificates.mx.dane.margin" in str(exc)
        return
    assert ok
    dane = config.certificate("mx").dane
    assert dane is not None and dane.margin == value and math.isfinite(dane.margin)
