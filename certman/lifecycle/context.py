"""What the engine and its steps need from the outside world; the CLI builds it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from certman.config.schema import CertificateConfig, Config
from certman.errors import ResolverUnreachable

T = TypeVar("T")

if TYPE_CHECKING:
    from pathlib import Path

    from certman.dns.provider import DnsProvider
    from certman.postfix.commands import Postfix


@dataclass
class ReloadBatch:
    """``certman run``: one Postfix reload per instance covers every certificate the run switched.

    A certificate whose files were switched (``State.reload_pending``) waits here instead of
    reloading; ``flush`` reloads each instance once, and the certificates it covered then verify
    without another reload, or, when that reload failed, roll back with its error. One that
    switches after the flush reloads itself.
    """

    _due: dict[str, Postfix] = field(default_factory=dict)  # config_dir -> instance
    _waiting: dict[str, str] = field(default_factory=dict)  # certificate -> config_dir
    _done: dict[str, Exception | None] = field(default_factory=dict)  # certificate -> outcome
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def defer(self, cert: str, postfix: Postfix) -> bool:
        """True when ``cert`` now waits for the flush; False when a flush already reloaded (or
        failed to reload) its instance after the switch."""
        with self._lock:
            if cert in self._done:
                return False
            self._due.setdefault(str(postfix.config_dir), postfix)
            self._waiting[cert] = str(postfix.config_dir)
            return True

    def due(self, postfix: Postfix) -> None:
        """A change that is not a certificate's (the DH files) needs ``postfix``'s reload."""
        with self._lock:
            self._due.setdefault(str(postfix.config_dir), postfix)

    def covers(self, cert: str) -> bool:
        """The run's reload of ``cert``'s instance came after its switch; raises that reload's
        error when it failed (the certificate then rolls back)."""
        with self._lock:
            if cert not in self._done:
                return False
            error = self._done[cert]
        if error is not None:
            raise error
        return True

    def flush(self) -> list[tuple[str, Exception | None, tuple[str, ...]]]:
        """Reload every instance a change waits for, once: (config_dir, the error or None, the
        certificates that waited for it)."""
        with self._lock:
            due, waiting = dict(self._due), dict(self._waiting)
            self._due.clear()
            self._waiting.clear()
        results: dict[str, Exception | None] = {}
        for key, postfix in due.items():
            try:
                postfix.reload()
            except Exception as exc:  # each certificate switched there rolls back with it
                results[key] = exc
            else:
                results[key] = None
        with self._lock:
            self._done.update({cert: results[key] for cert, key in waiting.items()})
        return [
            (key, error, tuple(sorted(c for c, k in waiting.items() if k == key)))
            for key, error in results.items()
        ]


@dataclass
class Context:
    """What the engine needs from the outside world; the CLI builds it."""

    config: Config
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    progress: Callable[[str], None] = lambda message: None
    notice: Callable[[str], None] = lambda message: None  # one line per change (log level 5)
    _providers: dict[str, DnsProvider] = field(default_factory=dict)
    _postfix: Postfix | None = None
    _instances: dict[str, Postfix] = field(default_factory=dict)
    reloads: ReloadBatch | None = None  # `certman run`: one reload per instance (issue 12)
    # `certman run` may advance several certificates at once ([acme] concurrency): these keep
    # the shared caches whole and one switch at a time per Postfix instance (postconf -e).
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _switch_locks: dict[str, threading.Lock] = field(default_factory=dict)

    @contextmanager
    def switching(self, cert: CertificateConfig) -> Iterator[None]:
        """Held while ``cert``'s files and settings change: one certificate at a time per
        Postfix instance, since ``postconf -e`` rewrites the whole main.cf/master.cf."""
        with self._lock:
            lock = self._switch_locks.setdefault(str(cert.install.config_dir), threading.Lock())
        with lock:
            yield

    def provider(self, name: str) -> DnsProvider:
        with self._lock:
            return self._provider(name)

    def _provider(self, name: str) -> DnsProvider:
        if name not in self._providers:
            from certman.dns.provider import ProviderContext, create_provider

            spec = self.config.providers[name]
            context = ProviderContext(self.config.resolvers, self.config.propagation.query_timeout)
            self._providers[name] = create_provider(spec.type, name, spec.options, context)
        return self._providers[name]

    def retrying(self, ask: Callable[[], T]) -> T:
        """``ask()``, asked again while no server answers at all (a lost UDP answer, a resolver
        restarting), at the propagation interval, for up to the propagation timeout."""
        deadline = self.clock() + self.config.propagation.timeout
        while True:
            try:
                return ask()
            except ResolverUnreachable as exc:
                if self.clock() >= deadline:
                    raise
                self.progress(f"{exc}; asking again")
                self.sleep(max(self.config.propagation.interval, 1.0))

    def providers(self) -> Mapping[str, DnsProvider]:
        return {name: self.provider(name) for name in self.config.providers}

    @property
    def postfix(self) -> Postfix:
        with self._lock:
            if self._postfix is None:
                from certman.postfix.commands import Postfix

                self._postfix = Postfix(self.config.postfix)
            return self._postfix

    def postfix_for(self, cert: CertificateConfig) -> Postfix:
        """The Postfix instance ``cert`` is served by (postmulti: its own config_dir).

        The configured reload_command is the default instance's; another instance reloads
        with ``postfix -c DIR reload``.
        """
        config_dir = cert.install.config_dir
        if config_dir == self.config.postfix.config_dir:
            return self.postfix
        with self._lock:
            return self._instance(config_dir)

    def _instance(self, config_dir: Path) -> Postfix:
        key = str(config_dir)
        if key not in self._instances:
            from certman.postfix.commands import Postfix

            config = replace(self.config.postfix, config_dir=config_dir, reload_command=None)
            self._instances[key] = Postfix(config)
        return self._instances[key]
