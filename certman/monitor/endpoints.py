"""The live side of ``certman check``: the endpoints of every install target, each probed once
per run, and the bounded pool of daemon threads that does the check's I/O.

An endpoint is what a client reaches (postfix/targets.py ``endpoints``: a master.cf service's
own port, STARTTLS on 25 and 587 and implicit TLS on 465 (RFC 8314), the SNI name); the probe
is keyed by (address, port, protocol, SNI name, key type), so certificates that share one are
served by one connection. Postfix is asked through a runner that answers each distinct
``postconf`` call once per run (the check only reads).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from certman.config.schema import CertificateConfig, Config
from certman.model import KeyType

if TYPE_CHECKING:
    from cryptography import x509

    from certman.postfix.commands import Postfix

# Threads for the check's I/O: DNS lookups, TLS probes, state files (the pool is shared).
WORKERS = 32


@dataclass
class Job:
    """One unit of I/O for the pool; ``value`` or ``error`` once ``done``."""

    label: str
    work: Callable[[], Any]
    value: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            self.value = self.work()
        except BaseException as exc:  # reported as this item's result, never lost
            self.error = exc
        finally:
            self.done.set()


class Pool:
    """At most ``size`` daemon threads working through the jobs in order.

    Daemon threads, not a ThreadPoolExecutor (whose workers are joined at exit): a hung
    resolver or smtpd must not keep the process alive past the deadline. Bounded, so 1,000
    certificates do not open 1,000 connections to one smtpd at once (its process limit,
    master(5) ``maxproc``, makes the rest wait in the listen queue anyway).
    """

    def __init__(self, size: int) -> None:
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._size = size
        self._threads = 0

    def submit(self, job: Job) -> Job:
        self._queue.put(job)
        with self._lock:
            if self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name="check", daemon=True).start()
        return job

    def _work(self) -> None:
        while True:
            with self._lock:  # a worker leaves only when no job is left for it
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    self._threads -= 1
                    return
            job.run()


class CachedRunner:
    """``subprocess.run`` for the Postfix commands of one check run: read-only, so each distinct
    ``postconf`` call runs once and its answer is shared by every certificate that asks."""

    def __init__(self, run: Callable[..., Any] | None = None) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, ...], tuple[threading.Lock, list[Any]]] = {}

    def __call__(self, argv: list[str], **kwargs: Any) -> Any:
        import subprocess

        run = self._run or subprocess.run
        with self._lock:
            lock, answer = self._calls.setdefault(tuple(argv), (threading.Lock(), []))
        with lock:
            if not answer:
                options = {k: v for k, v in kwargs.items() if k != "check"}
                answer.append(run(argv, check=False, **options))
            return answer[0]


@dataclass(frozen=True)
class Probe:
    """One live TLS endpoint; probed once per check, whichever certificates it serves."""

    address: str
    port: int
    implicit_tls: bool
    server_name: str | None  # None: the listener has no tls_server_sni_maps, no name matters
    kind: KeyType | None

    @property
    def label(self) -> str:
        tls = "tls" if self.implicit_tls else "starttls"
        kind = f" {self.kind}" if self.kind else ""
        return f"tls {self.address}:{self.port} {tls} {self.server_name or '(no SNI)'}{kind}"


@dataclass(frozen=True)
class Endpoint:
    """Where one certificate's target is served: its probe and the TLSA name it must match."""

    cert: str
    target: str
    host: str
    port: int
    address: str
    kind: KeyType | None
    implicit_tls: bool = False
    dane: bool = True  # the port is one of [dane] ports: the chain must match its TLSA RRset
    by_name: bool = True  # the listener picks its certificate by SNI (tls_server_sni_maps)

    @property
    def subject(self) -> str:
        return f"{self.host}:{self.port}" + (f" ({self.kind})" if self.kind else "")

    @property
    def probe(self) -> Probe:
        """Without tls_server_sni_maps Postfix ignores the SNI name (postconf(5)), so every name
        on one listener gets the same chain: one probe, sent without a name, serves them all."""
        name = self.host if self.by_name else None
        return Probe(self.address, self.port, self.implicit_tls, name, self.kind)


def probe_address(cert: CertificateConfig) -> str:
    """The address certman connects to (as deploy's verify does)."""
    if cert.install.probe_address:
        return cert.install.probe_address
    return cert.dane.probe_address if cert.dane else "127.0.0.1"


def endpoints(cert: CertificateConfig, postfix: Postfix) -> list[Endpoint]:
    """Every endpoint of every install target (postfix/targets.py ``endpoints``: the service's
    port, STARTTLS or implicit TLS, the SNI name), once per DANE host name clients send
    (RFC 7672 §8.1) where the target is not an SNI name of its own."""
    from certman.postfix.targets import SNI_MAPS, effective
    from certman.postfix.targets import endpoints as target_endpoints

    by_name = {
        str(t): bool(effective(postfix, t, SNI_MAPS).get(SNI_MAPS)) for t in cert.install.targets
    }
    kinds: list[KeyType | None] = list(cert.key_types) if len(cert.key_types) > 1 else [None]
    dane_ports = cert.dane.ports if cert.dane else ()
    default_name = cert.dane.hosts[0] if cert.dane else None
    address = probe_address(cert)
    out: list[Endpoint] = []
    for point in target_endpoints(cert, postfix):
        hosts = [point.server_name]
        if cert.dane and point.server_name == default_name:
            hosts = list(cert.dane.hosts)
        for host in hosts:
            for kind in kinds:
                ep = Endpoint(
                    cert.name,
                    point.target,
                    host,
                    point.port,
                    address,
                    kind,
                    point.implicit_tls,
                    point.port in dane_ports,
                    by_name[point.target],
                )
                if ep not in out:
                    out.append(ep)
    return out


def postfix_for(
    cfg: Config, cert: CertificateConfig, runner: CachedRunner, timeout: float
) -> Postfix:
    from dataclasses import replace

    from certman.postfix.commands import Postfix

    config = cfg.postfix
    if cert.install.config_dir != config.config_dir:  # a postmulti instance
        config = replace(config, config_dir=cert.install.config_dir, reload_command=None)
    return Postfix(config, run=runner, timeout=timeout)


def fetch(probe: Probe, deadline: float) -> list[x509.Certificate]:
    from certman.dane.probe import fetch_chain

    wait = max(1.0, min(10.0, deadline - time.monotonic()))
    return fetch_chain(
        probe.address,
        probe.port,
        timeout=wait,
        key_type=probe.kind,
        server_name=probe.server_name,
        implicit_tls=probe.implicit_tls,
    )
