"""DNS provider discovery: built-in providers by name, third-party ones through entry points.

Modules are imported by name (``importlib``) only when a provider of that type is configured, so
the configuration reader can check a provider's options without importing every provider (or
boto3). Third-party providers register under the entry-point group ``certman.dns_providers``.
"""

from __future__ import annotations

import importlib
from typing import Any

from certman.errors import ConfigError

ENTRY_POINT_GROUP = "certman.dns_providers"


BUILTIN_PROVIDERS = {
    "rfc2136": ("certman.dns.providers.rfc2136", "Rfc2136Provider", None),
    "route53": ("certman.dns.providers.route53", "Route53Provider", "route53"),
    "powerdns": ("certman.dns.providers.powerdns", "PowerDnsProvider", None),
    "exec": ("certman.dns.providers.exec", "ExecProvider", None),
}


def load_provider_class(type_name: str, where: str) -> Any:
    """The class for ``type_name``: built-in by name, else from the entry-point group.

    ``where`` names the config file and key for the error message.
    """
    if type_name in BUILTIN_PROVIDERS:
        module_name, class_name, extra = BUILTIN_PROVIDERS[type_name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            hint = f"; install it with: pip install 'certman[{extra}]'" if extra else ""
            raise ConfigError(
                f"{where}: provider type {type_name!r} needs the missing module {exc.name}{hint}"
            ) from None
        return getattr(module, class_name)
    from importlib import metadata  # 13 ms: only for providers certman does not ship

    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == type_name:
            try:
                return entry.load()
            except ImportError as exc:
                raise ConfigError(
                    f"{where}: provider type {type_name!r} ({entry.value}) failed to load: {exc}"
                ) from None
    known = sorted(
        set(BUILTIN_PROVIDERS) | {e.name for e in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    )
    raise ConfigError(f"{where}: unknown provider type {type_name!r}; known: {', '.join(known)}")
