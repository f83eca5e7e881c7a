"""A watch on what a rollover changes, for the kill sweep: which keys Postfix serves and which
TLSA records each nameserver holds, sampled together every ~0.1 s.

The prober (helpers.Prober) sees what a DANE sender sees through a cache; this sees the cause
directly, so the RFC 7671 §8.1 rules can be checked on every sample:

* the record of a served key is on every authoritative nameserver (never removed while served,
  never served before it is there);
* a new key is served no sooner than 2 x TTL + margin after its record reached every nameserver.

Each sample reads the nameservers first and Postfix last: a record removed after a swap or a key
served after its record was published can then never look early (the watch errs towards "fine"
by at most one sampling interval, which the timing check allows for).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from testbed import Testbed

from certman import keys
from certman.dane.probe import fetch_chain
from certman.model import KeyType


@dataclass(frozen=True)
class Sample:
    at: float
    records: dict[str, frozenset[str]]  # nameserver address -> key digests of its TLSA RRset
    served: dict[str, str]  # key type -> SPKI SHA-256 of the leaf Postfix serves

    def on_every_nameserver(self) -> frozenset[str]:
        return frozenset.intersection(*self.records.values())


def tlsa_digests(server: str, name: str) -> frozenset[str]:
    """The key digests of ``name``'s TLSA RRset as ``server`` serves it (no cache in between)."""
    import dns.message
    import dns.query

    answer = dns.query.udp(dns.message.make_query(name, "TLSA"), server, timeout=2)
    return frozenset(str(rdata).split()[-1] for rrset in answer.answer for rdata in rrset)


@dataclass
class Watch:
    bed: Testbed
    name: str  # the TLSA owner name
    address: str  # Postfix's
    kinds: Sequence[KeyType]
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> Sample:
        servers = (self.bed.bind.primary, self.bed.bind.secondary)
        records = {s: tlsa_digests(s, self.name) for s in servers}
        served = {
            k.value: keys.cert_spki_sha256(fetch_chain(self.address, 25, timeout=3, key_type=k)[0])
            for k in self.kinds
        }
        return Sample(time.time(), records, served)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception:  # a reload in progress, a query lost: the next sample will do
                self.errors += 1
            self._stop.wait(0.1)

    @contextmanager
    def running(self) -> Iterator[Watch]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(30)

    # -- the checks ------------------------------------------------------------------------------

    def served_without_record(self) -> list[tuple[float, str, str]]:
        """(time, key type, digest) of every sample where a served key's record was missing
        from a nameserver."""
        return [
            (s.at, kind, spki)
            for s in self.samples
            for kind, spki in s.served.items()
            if spki not in s.on_every_nameserver()
        ]

    def first(self, spki: str, *, served: bool) -> float | None:
        for s in self.samples:
            if (spki in s.served.values()) if served else (spki in s.on_every_nameserver()):
                return s.at
        return None

    def resolution(self) -> float:
        """The longest interval between two samples: how late the watch may see a change."""
        times = [s.at for s in self.samples]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def newly_served(self) -> set[str]:
        assert self.samples, "the watch took no sample"
        before = set(self.samples[0].served.values())
        return {spki for s in self.samples for spki in s.served.values()} - before

    def early_swaps(self, wait: float) -> list[tuple[str, float]]:
        """(digest, seconds) for each newly served key served less than ``wait`` seconds
        (2 x TTL + margin) after its record was first on every nameserver, allowing for the
        sampling resolution. A record there from the first sample on was published (and aged)
        before the watch started: a planned rollover's next key."""
        slack = self.resolution()
        early = []
        aged = self.samples[0].on_every_nameserver()
        for spki in sorted(self.newly_served() - aged):
            served, published = self.first(spki, served=True), self.first(spki, served=False)
            assert served is not None
            if published is None or served - published < wait - slack:
                early.append((spki, -1.0 if published is None else round(served - published, 2)))
        return early
