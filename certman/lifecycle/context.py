"""What the engine and its steps need from the outside world; the CLI builds it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from certman.config.schema import CertificateConfig, Config
from certman.errors import ResolverUnreachable

T = TypeVar("T")

if TYPE_CHECKING:
    from certman.dns.provider import DnsProvider
    from certman.postfix.commands import Postfix


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

    def provider(self, name: str) -> DnsProvider:
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
        key = str(config_dir)
        if key not in self._instances:
            from certman.postfix.commands import Postfix

            config = replace(self.config.postfix, config_dir=config_dir, reload_command=None)
            self._instances[key] = Postfix(config)
        return self._instances[key]
