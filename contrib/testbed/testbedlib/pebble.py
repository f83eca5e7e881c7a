"""Pebble, the ACME test CA, with its own HTTPS certificate and resolver."""

from __future__ import annotations

import json
import os
import secrets
from functools import partial
from pathlib import Path
from typing import Any

from .context import CA_RESOLVER, PEBBLE, Context
from .pki import make_ca, make_server_cert
from .probe import http_get, http_ok
from .proc import wait_for

DIRECTORY = f"https://{PEBBLE}:14000/dir"
MANAGEMENT = f"https://{PEBBLE}:15000"


def start_pebble(ctx: Context) -> dict[str, Any]:
    workdir = ctx.path("pebble", "pebble.json").parent
    api_ca = _make_api_certs(workdir)
    eab = {"kid": "certman-kid", "hmac_key": secrets.token_urlsafe(48)} if ctx.opts.eab else None
    (workdir / "pebble.json").write_text(json.dumps(_config(ctx, workdir, eab), indent=2))
    started = ctx.spawn(
        "pebble",
        ["pebble", "-config", str(workdir / "pebble.json"), "-dnsserver", f"{CA_RESOLVER}:53"],
        env=_env(ctx),
    )
    wait_for(
        started, "the ACME directory", partial(http_ok, DIRECTORY, cafile=api_ca), ctx.deadline()
    )
    # Pebble makes a new root and intermediate at every start.
    root = workdir / "root.pem"
    root.write_bytes(http_get(f"{MANAGEMENT}/roots/0", cafile=api_ca))
    intermediate = workdir / "intermediate.pem"
    intermediate.write_bytes(http_get(f"{MANAGEMENT}/intermediates/0", cafile=api_ca))
    return {
        "directory": DIRECTORY,
        "management": MANAGEMENT,
        "api_ca": str(api_ca),
        "root": str(root),
        "intermediate": str(intermediate),
        "eab": eab,
        "dns_resolver": CA_RESOLVER,
    }


def _make_api_certs(workdir: Path) -> Path:
    """Pebble ships no certificate for its own HTTPS API: a throwaway CA signs one."""
    ca_key, ca_cert = workdir / "api-ca.key", workdir / "api-ca.pem"
    make_ca(ca_key, ca_cert, "certman testbed Pebble API CA")
    make_server_cert(
        workdir / "api.key",
        workdir / "api.pem",
        "localhost",
        f"IP:{PEBBLE},DNS:localhost",
        issuer=(ca_cert, ca_key),
    )
    return ca_cert


def _config(ctx: Context, workdir: Path, eab: dict[str, str] | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listenAddress": f"{PEBBLE}:14000",
        "managementListenAddress": f"{PEBBLE}:15000",
        "certificate": str(workdir / "api.pem"),
        "privateKey": str(workdir / "api.key"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab is not None,
    }
    if eab is not None:
        config["externalAccountMACKeys"] = {eab["kid"]: eab["hmac_key"]}
    if ctx.opts.cert_validity is not None:
        config["certificateValidityPeriod"] = ctx.opts.cert_validity
    return {"pebble": config}


def _env(ctx: Context) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    # A reused authorization would leave an order without a challenge to answer.
    env["PEBBLE_AUTHZREUSE"] = "0"
    env["PEBBLE_WFE_NONCEREJECT"] = str(ctx.opts.nonce_reject)
    if not ctx.opts.va_sleep:
        env["PEBBLE_VA_NOSLEEP"] = "1"
    return env
