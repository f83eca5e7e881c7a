"""The retry policy around the acme library: backoff schedule, Retry-After, the retrying network."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import requests
from acme import messages
from certgen import fixed_ec_key
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from certman.acme.client import (
    RetryingNetwork,
    RetryPolicy,
    Transient,
    backoff_delay,
    backoff_schedule,
    classify,
    parse_retry_after,
    problem_text,
)
from certman.errors import AcmeError, RetryLater

NOW = 1_700_000_000.0
SERVER = "https://ca.test/dir"


def test_backoff_grows_exponentially_with_jitter_inside_bounds() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        step = min(30.0, 1.0 * 2**attempt)
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # jittered, not constant


def test_backoff_is_capped_even_for_huge_attempt_numbers() -> None:
    assert backoff_delay(10_000, 1.0, 30.0, random.Random(0)) <= 30.0


def test_backoff_schedule_has_one_wait_per_retry() -> None:
    schedule = backoff_schedule(RetryPolicy(attempts=4, base=1.0, cap=30.0), random.Random(3))
    assert len(schedule) == 4
    assert 0.5 <= schedule[0] <= 1.0 and 4.0 <= schedule[3] <= 8.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0),
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(
    header: str | None, expected: float | None
) -> None:
    value = parse_retry_after(header, NOW)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def _problem(code: str, status: int, retry_after: str | None = None) -> messages.Error:
    error = messages.Error.with_code(code, detail=f"{code} detail")
    from certman.acme.client import Reply

    object.__setattr__(error, "certman_reply", Reply(status, retry_after))
    return error


def test_classify_sorts_transient_failures_from_final_answers() -> None:
    assert classify(_problem("badNonce", 400)) is Transient.NONCE
    assert classify(_problem("rateLimited", 429, "60")) is Transient.RATE_LIMITED
    assert classify(_problem("serverInternal", 500)) is Transient.SERVER
    assert classify(_problem("unauthorized", 403)) is None
    assert classify(_problem("rejectedIdentifier", 400)) is None
    assert classify(requests.exceptions.ConnectionError("refused")) is Transient.NETWORK
    assert classify(requests.exceptions.ReadTimeout("slow")) is Transient.NETWORK
    assert classify(requests.exceptions.SSLError("bad cert")) is None
    assert classify(ValueError("x")) is None


def test_problem_text_is_one_line_with_subproblems() -> None:
    error = messages.Error.from_json(
        {
            "type": "urn:ietf:params:acme:error:rejectedIdentifier",
            "detail": "Error creating new order\n:: policy forbids",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                    "detail": "forbidden name",
                    "identifier": {"type": "dns", "value": "bad.test"},
                }
            ],
        }
    )
    text = problem_text(error)
    assert "\n" not in text
    assert text.startswith("rejectedIdentifier: Error creating new order")
    assert "bad.test: rejectedIdentifier: forbidden name" in text


# -- the network, with a scripted HTTP session ----------------------------------------------------


def _response(status: int, body: dict[str, Any] | None, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        ctype = "application/problem+json" if status >= 400 else "application/json"
        response.headers["Content-Type"] = ctype
    response.headers["Replay-Nonce"] = f"nonce{status}x{len(headers)}"
    response.headers.update(headers)
    return response


def _error(code: str, status: int, **headers: str) -> requests.Response:
    body = {"type": f"urn:ietf:params:acme:error:{code}", "detail": f"{code} from the CA"}
    return _response(status, body, **headers)


class ScriptedSession:
    """Stands in for requests.Session: answers from a script, records every request."""

    def __init__(self, script: Sequence[requests.Response | Exception]) -> None:
        self.script: Iterator[requests.Response | Exception] = iter(script)
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests.append((method, url))
        if method == "HEAD":
            return _response(200, None)
        item = next(self.script)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _network(
    script: Sequence[requests.Response | Exception], clock: Clock, **policy: Any
) -> tuple[RetryingNetwork, ScriptedSession]:
    net = RetryingNetwork(
        JWKEC(key=fixed_ec_key()),
        alg=ES256,
        verify_ssl=True,
        timeout=5,
        server=SERVER,
        policy=RetryPolicy(**policy),
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
    )
    session = ScriptedSession(script)
    net.session = session  # type: ignore[assignment]
    return net, session


def _post(net: RetryingNetwork) -> requests.Response:
    return net.post("https://ca.test/new-order", None, new_nonce_url="https://ca.test/nonce")


def test_many_bad_nonces_in_a_row_are_retried_until_success() -> None:
    clock = Clock()
    script: list[requests.Response | Exception] = [_error("badNonce", 400) for _ in range(9)]
    net, session = _network([*script, _response(200, {"ok": True})], clock)
    assert _post(net).json() == {"ok": True}
    assert len([r for r in session.requests if r[0] == "POST"]) == 10
    assert sum(clock.sleeps) < 5  # short waits: a bad nonce costs a round trip, no capacity


def test_bad_nonce_retries_are_bounded() -> None:
    clock = Clock()
    script: list[requests.Response | Exception] = [_error("badNonce", 400) for _ in range(40)]
    net, _ = _network(script, clock, nonce_attempts=5)
    with pytest.raises(RetryLater) as caught:
        _post(net)
    assert "badNonce" in str(caught.value) and SERVER in str(caught.value)


def test_bad_nonce_retry_uses_the_nonce_from_the_error_answer() -> None:
    clock = Clock()
    net, session = _network([_error("badNonce", 400), _response(200, {})], clock)
    _post(net)
    # one HEAD for the first nonce; the retry reuses the nonce the error answer carried
    assert [m for m, _ in session.requests] == ["HEAD", "POST", "POST"]


def test_server_errors_are_retried_with_backoff_then_succeed() -> None:
    clock = Clock()
    script: list[requests.Response | Exception] = [
        _error("serverInternal", 500),
        _response(503, None),
        requests.exceptions.ConnectionError("reset"),
        _response(200, {"ok": 1}),
    ]
    net, _ = _network(script, clock, attempts=4, base=1.0, cap=30.0)
    assert _post(net).json() == {"ok": 1}
    assert len(clock.sleeps) == 3
    assert 0.5 <= clock.sleeps[0] <= 1 and 1 <= clock.sleeps[1] <= 2 and 2 <= clock.sleeps[2] <= 4


def test_rate_limit_with_short_retry_after_waits_as_told() -> None:
    clock = Clock()
    script = [_error("rateLimited", 429, **{"Retry-After": "20"}), _response(200, {})]
    net, _ = _network(script, clock)
    _post(net)
    assert clock.sleeps == [20.0]


def test_rate_limit_with_long_retry_after_raises_retry_later_at_that_time() -> None:
    clock = Clock()
    net, _ = _network([_error("rateLimited", 429, **{"Retry-After": "7200"})], clock)
    with pytest.raises(RetryLater) as caught:
        _post(net)
    assert caught.value.not_before == pytest.approx(NOW + 7200)
    assert caught.value.server_asked  # the CA's own Retry-After: `issue` must honour it too
    assert clock.sleeps == []  # never blocks a run for hours
    message = str(caught.value)
    assert "\n" not in message and SERVER in message and "rateLimited" in message


def test_exhausted_server_error_budget_raises_retry_later() -> None:
    clock = Clock()
    script: list[requests.Response | Exception] = [_error("serverInternal", 500) for _ in range(5)]
    net, _ = _network(script, clock, attempts=2)
    with pytest.raises(RetryLater) as caught:
        _post(net)
    assert len(clock.sleeps) == 2
    assert caught.value.not_before > clock.now
    assert not caught.value.server_asked  # our own back-off: an operator may try again now


def test_final_errors_are_not_retried() -> None:
    clock = Clock()
    net, session = _network([_error("unauthorized", 403)], clock)
    with pytest.raises(messages.Error) as caught:
        _post(net)
    assert caught.value.code == "unauthorized"
    assert clock.sleeps == [] and len(session.requests) == 2


def test_tls_verification_failure_is_not_retried() -> None:
    clock = Clock()
    net, _ = _network([requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED")], clock)
    with pytest.raises(requests.exceptions.SSLError):
        _post(net)
    assert clock.sleeps == []


def test_acme_step_names_server_and_step_in_one_line() -> None:
    from certman.acme.client import acme_step

    with pytest.raises(AcmeError) as caught, acme_step(SERVER, "new order for mx1.dane.test"):
        raise messages.Error.with_code("caa", detail="CAA record for dane.test forbids issuance")
    assert str(caught.value) == (
        f"ACME server {SERVER}: new order for mx1.dane.test: "
        "caa: CAA record for dane.test forbids issuance"
    )
