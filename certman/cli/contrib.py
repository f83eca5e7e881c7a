"""``certman contrib``: the operator files shipped in the wheel (units, cron file, hook, example).

``pipx install certman`` on a mail host gives no git checkout; these files come from the installed
package instead (``certman/contrib_data``), printed to stdout or installed where the operator says.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from certman.errors import CertmanError, ConfigError
from certman.fsutil import atomic_write


@dataclass(frozen=True)
class ContribFile:
    name: str  # what the operator types
    resource: str  # the file in certman/contrib_data
    mode: int
    where: str  # the usual destination, shown by `certman contrib list`
    what: str


FILES = (
    ContribFile(
        "example-config",
        "certman.toml.example",
        0o600,
        "/etc/certman/certman.toml",
        "an annotated configuration to start from",
    ),
    ContribFile(
        "systemd-service",
        "certman.service",
        0o644,
        "/etc/systemd/system/certman.service",
        "the oneshot unit that runs `certman run`",
    ),
    ContribFile(
        "systemd-timer",
        "certman.timer",
        0o644,
        "/etc/systemd/system/certman.timer",
        "starts certman.service every 15 minutes",
    ),
    ContribFile(
        "systemd-service-instance",
        "certman@.service",
        0o644,
        "/etc/systemd/system/certman@.service",
        "templated unit: certman@NAME reads /etc/certman/NAME.toml (one per postmulti instance)",
    ),
    ContribFile(
        "systemd-timer-instance",
        "certman@.timer",
        0o644,
        "/etc/systemd/system/certman@.timer",
        "starts certman@NAME.service every 15 minutes",
    ),
    ContribFile(
        "cron", "certman.cron", 0o644, "/etc/cron.d/certman", "the same schedule without systemd"
    ),
    ContribFile(
        "certbot-hook",
        "certbot-deploy",
        0o755,
        "/etc/letsencrypt/renewal-hooks/deploy/certman",
        "certbot deploy hook: certbot issues, certman gates the deployment on DNS",
    ),
    ContribFile(
        "postfix-snippet",
        "main.cf.snippet",
        0o644,
        "(read it; apply with postconf -e)",
        "the main.cf settings DANE and certman rely on",
    ),
)


def find(name: str) -> ContribFile:
    for item in FILES:
        if name in (item.name, item.resource):
            return item
    known = ", ".join(f.name for f in FILES)
    raise ConfigError(f"no contrib file named {name!r}; known: {known}")


def read(item: ContribFile) -> bytes:
    return resources.files("certman.contrib_data").joinpath(item.resource).read_bytes()


def listing() -> list[str]:
    width = max(len(f.name) for f in FILES)
    return [f"{f.name:<{width}}  {f.where}\n{'':<{width}}  {f.what}" for f in FILES]


def install(item: ContribFile, dest: Path, *, force: bool) -> Path:
    """Write ``item`` to ``dest`` (a file, or a directory to put it in); never overwrite unasked."""
    if dest.is_dir():
        dest = dest / Path(item.where).name if item.where.startswith("/") else dest / item.resource
    if dest.exists() and not force:
        raise CertmanError(f"{dest}: exists; not overwritten (use --force to replace it)")
    if not dest.parent.is_dir():
        raise CertmanError(f"{dest.parent}: no such directory")
    atomic_write(dest, read(item), mode=item.mode)
    return dest
