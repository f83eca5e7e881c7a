"""Pure parts of issuance: the CSR, the newOrder message, chain choice, the poll schedule."""

from __future__ import annotations

import json

from certgen import fixed_ec_key, issue, rsa_key
from cryptography import x509
from cryptography.x509.oid import NameOID

from certman.acme.client import OrderRequest
from certman.acme.order import POLL_CAP, POLL_FIRST, make_csr, pick_chain, poll_delay


def test_csr_names_every_domain_and_is_signed_by_the_key() -> None:
    key = fixed_ec_key()
    csr = make_csr(key, ("mx1.dane.test", "*.dane.test", "dane.test"))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx1.dane.test", "*.dane.test", "dane.test"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mx1.dane.test"
    assert csr.public_key() == key.public_key()


def test_csr_with_rsa_key_and_long_first_name_has_no_common_name() -> None:
    long_name = ("a" * 60) + ".dane.test"
    csr = make_csr(rsa_key(), (long_name,))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


def _order_json(**fields: object) -> dict[str, object]:
    from acme import messages

    ident = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="mx1.dane.test")]
    result: dict[str, object] = json.loads(OrderRequest(identifiers=ident, **fields).json_dumps())
    return result


def test_new_order_carries_replaces_and_profile_when_given() -> None:
    body = _order_json(profile="tlsserver", replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    assert body["replaces"] == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert body["profile"] == "tlsserver"
    assert body["identifiers"] == [{"type": "dns", "value": "mx1.dane.test"}]


def test_new_order_leaves_out_absent_replaces_and_profile() -> None:
    assert _order_json(profile=None, replaces=None) == {
        "identifiers": [{"type": "dns", "value": "mx1.dane.test"}]
    }


def test_preferred_chain_is_chosen_by_the_top_certificates_issuer() -> None:
    root_a, root_b = issue("Root A", ca=True), issue("Root B", ca=True)
    inter_a = issue("Intermediate", issuer=root_a, ca=True)
    inter_b = issue("Intermediate", issuer=root_b, ca=True)
    leaf = issue("mx1.dane.test", issuer=inter_a)
    chains = [[leaf.cert, inter_a.cert], [leaf.cert, inter_b.cert]]
    assert pick_chain(chains, "Root B") == 1
    assert pick_chain(chains, "root a") == 0
    assert pick_chain(chains, "Root C") is None


def test_preferred_chain_falls_back_to_any_issuer_in_the_chain() -> None:
    root = issue("Old Root", ca=True)
    cross = issue("New Root", issuer=root, ca=True)
    inter = issue("Intermediate", issuer=cross, ca=True)
    leaf = issue("mx1.dane.test", issuer=inter)
    chains = [[leaf.cert, inter.cert], [leaf.cert, inter.cert, cross.cert]]
    assert pick_chain(chains, "Old Root") == 1
    assert pick_chain(chains, "New Root") == 0


def test_poll_schedule_starts_fast_backs_off_and_honours_retry_after() -> None:
    delays = [poll_delay(n) for n in range(12)]
    assert delays[0] == POLL_FIRST
    assert delays == sorted(delays) and delays[-1] == POLL_CAP
    assert poll_delay(0, retry_after=3.0) == 3.0
    assert poll_delay(10, retry_after=0.1) == POLL_CAP


class _Answer:
    def __init__(self, body: dict[str, object]) -> None:
        self.body = body
        self.headers: dict[str, str] = {}

    def json(self) -> dict[str, object]:
        return self.body


class _OrderCA:
    """An order that is "ready" once validation is done, "processing" right after finalize,
    then "valid": each POST returns the next state; the sleeps are recorded."""

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.requests: list[str] = []
        self.slept: list[float] = []
        self.directory = {"newNonce": "https://ca.test/nonce"}
        self.net = self

    def post(self, url: str, obj: object, **_: object) -> _Answer:
        self.requests.append(url)
        return _Answer(_order(self.states.pop(0)))


def _order(status: str) -> dict[str, object]:
    body: dict[str, object] = {
        "status": status,
        "identifiers": [{"type": "dns", "value": "mx1.dane.test"}],
        "authorizations": ["https://ca.test/authz/1"],
        "finalize": "https://ca.test/finalize/1",
    }
    if status == "valid":
        body["certificate"] = "https://ca.test/cert/1"
    return body


def test_finalize_looks_at_the_stale_order_at_once_and_restarts_the_poll_schedule() -> None:
    """newOrder's "pending" is from before validation: fetched again without a pause; after
    the finalize POST the first poll waits POLL_FIRST, not the next step of the old schedule
    (each skipped pause cost 0.05-0.1 s of every issuance)."""
    from acme import messages

    from certman.acme.order import AcmeSession, finalize_order

    ca = _OrderCA(["ready", "processing", "valid"])
    session = AcmeSession(
        ca,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "ca.test",
        ca.slept.append,
        lambda: 0.0,
        lambda _: None,
        60.0,
    )
    pending = messages.Order.from_json(_order("pending"))
    csr = make_csr(fixed_ec_key(), ("mx1.dane.test",))
    url = finalize_order(session, "https://ca.test/order/1", pending, csr, ["mx1.dane.test"])
    assert url == "https://ca.test/cert/1"
    assert ca.requests == [
        "https://ca.test/order/1",
        "https://ca.test/finalize/1",
        "https://ca.test/order/1",
    ]
    assert ca.slept == [POLL_FIRST]
