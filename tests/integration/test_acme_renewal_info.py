"""ARI (RFC 9773), ``replaces``, profiles and CA-side errors, through tests/ariproxy.py in front of
the testbed's Pebble (Debian's Pebble 2.4 has neither ARI nor profiles)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from acme_support import Timer, providers_of, unique_name, write_config
from ariproxy import AriProxy, Injected, running_proxy
from testbed import Testbed

from certman.acme.challenges import challenge_record_name
from certman.acme.client import OrderRequest
from certman.acme.issue import IssuedCertificate, issue_certificate, renewal_info
from certman.config.schema import Config
from certman.errors import AcmeError, RetryLater
from certman.keys import generate_key
from certman.model import KeyType

pytestmark = pytest.mark.integration

UTC = datetime.UTC


@pytest.fixture
def proxy(testbed: Testbed, tmp_path: Path) -> Iterator[AriProxy]:
    upstream = testbed.pebble.directory.removesuffix("/dir")
    with running_proxy(upstream, testbed.pebble.api_ca, tmp_path / "proxy") as running:
        yield running


def _config(tmp_path: Path, testbed: Testbed, proxy: AriProxy, **acme: object) -> Config:
    return write_config(
        tmp_path,
        testbed,
        domains=(unique_name("ari"),),
        acme={"directory": f"{proxy.base}/dir", "ca_bundle": str(proxy.tls.ca), **acme},
    )


def _issue(
    config: Config,
    *,
    replaces: str | None = None,
    messages: list[str] | None = None,
    timer: Timer | None = None,
) -> IssuedCertificate:
    timer = timer or Timer()
    return issue_certificate(
        config,
        config.certificate("mx"),
        generate_key(KeyType.ECDSA_P256),
        providers=providers_of(config),
        sleep=timer.sleep,
        clock=timer.clock,
        replaces=replaces,
        progress=messages.append if messages is not None else None,
    )


def test_renewal_info_returns_the_window_the_ca_suggests(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    issued = _issue(config)
    start = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(days=1)
    proxy.window = (start, start + datetime.timedelta(hours=12))
    proxy.retry_after = "7200"
    proxy.explanation_url = "https://ca.test/incident"
    now = time.time()
    window = renewal_info(config, issued.fullchain_pem, clock=lambda: now)
    assert window is not None
    assert window.start == start.timestamp()
    assert window.end == start.timestamp() + 12 * 3600
    assert window.recheck_at == now + 7200  # the server's Retry-After
    assert window.explanation_url == "https://ca.test/incident"
    assert proxy.renewal_queries == [issued.ari_id]


def test_renewal_info_clamps_a_too_eager_retry_after(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    issued = _issue(config)
    now = datetime.datetime.now(UTC)
    proxy.window = (now, now + datetime.timedelta(hours=1))
    proxy.retry_after = "1"
    window = renewal_info(config, issued.fullchain_pem, clock=lambda: 1000.0)
    assert window is not None and window.recheck_at == 1060.0


def test_renewal_info_is_none_when_the_ca_has_no_ari(testbed: Testbed, tmp_path: Path) -> None:
    config = write_config(tmp_path, testbed, domains=(unique_name(),))
    issued = _issue(config)
    assert renewal_info(config, issued.fullchain_pem, clock=time.time) is None


def test_renewal_info_for_an_unknown_certificate_is_an_error(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    issued = _issue(config)
    proxy.window = None  # the proxy answers 404
    with pytest.raises(AcmeError) as caught:
        renewal_info(config, issued.fullchain_pem, clock=time.time)
    message = str(caught.value)
    assert message.startswith(f"ACME server {proxy.base}/dir: renewalInfo for {issued.ari_id}: ")
    assert "malformed" in message


def test_renewal_order_names_the_certificate_it_replaces(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    first = _issue(config)
    renewal = write_config(
        tmp_path,
        testbed,
        domains=(unique_name("ari"),),
        acme={"directory": f"{proxy.base}/dir", "ca_bundle": str(proxy.tls.ca)},
    )
    _issue(renewal, replaces=first.ari_id)
    assert "replaces" not in proxy.new_orders[0]
    assert proxy.new_orders[-1]["replaces"] == first.ari_id


def test_refused_replaces_is_dropped_and_the_order_retried(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    proxy.inject.append(
        Injected(409, "alreadyReplaced", "already replaced", only_with_replaces=True)
    )
    messages: list[str] = []
    issued = _issue(config, replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE", messages=messages)
    assert issued.leaf is not None
    assert [o.get("replaces") for o in proxy.new_orders] == [
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE",
        None,
    ]
    assert any("refused replaces=" in m for m in messages)


def test_offered_profile_is_requested(testbed: Testbed, tmp_path: Path, proxy: AriProxy) -> None:
    proxy.profiles = {"classic": "90 days", "tlsserver": "the new default"}
    config = _config(tmp_path, testbed, proxy, profile="tlsserver")
    _issue(config)
    assert proxy.new_orders[-1]["profile"] == "tlsserver"


def test_profile_the_ca_does_not_offer_is_left_out(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    proxy.profiles = {"classic": "90 days"}
    config = _config(tmp_path, testbed, proxy, profile="shortlived")
    messages: list[str] = []
    _issue(config, messages=messages)
    assert "profile" not in proxy.new_orders[-1]
    assert any("profile 'shortlived' not offered" in m and "classic" in m for m in messages)


def test_long_rate_limit_raises_retry_later_with_the_servers_time(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    domain = config.certificate("mx").domains[0]
    proxy.inject.append(Injected(429, "rateLimited", "too many new orders", retry_after="3600"))
    timer = Timer()
    before = time.time()
    with pytest.raises(RetryLater) as caught:
        _issue(config, timer=timer)
    assert before + 3600 <= caught.value.not_before <= time.time() + 3600
    message = str(caught.value)
    assert "\n" not in message and f"{proxy.base}/dir" in message and domain in message
    assert "rateLimited" in message and "too many new orders" in message
    assert timer.slept == 0.0  # never blocks a run for an hour
    assert providers_of(config)["bind"].read(challenge_record_name(domain), "TXT") is None


def test_server_errors_are_retried_and_the_order_goes_through(
    testbed: Testbed, tmp_path: Path, proxy: AriProxy
) -> None:
    config = _config(tmp_path, testbed, proxy)
    proxy.inject += [
        Injected(503, "serverInternal", "maintenance", retry_after="1"),
        Injected(500, "serverInternal", "oops"),
    ]
    timer = Timer()
    _issue(config, timer=timer)
    assert len(proxy.new_orders) == 3
    assert timer.slept >= 1.0 + 1.0  # Retry-After: 1, then backoff from 1 s (with jitter)


def test_replaces_is_not_sent_to_a_ca_without_ari(testbed: Testbed, tmp_path: Path) -> None:
    # Pebble itself, no proxy: no renewalInfo in the directory. Record what the client posts.
    config = write_config(tmp_path, testbed, domains=(unique_name(),))
    posted: list[object] = []
    original = OrderRequest.to_partial_json

    def spy(self: OrderRequest) -> dict[str, object]:
        body: dict[str, object] = original(self)
        posted.append(body)
        return body

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OrderRequest, "to_partial_json", spy)
        _issue(config, replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    assert posted and all("replaces" not in body for body in posted)  # type: ignore[operator]
