"""moto in server mode: Route 53 over HTTP for the route53 provider."""

from __future__ import annotations

import os
from typing import Any

from .context import MOTO, Context
from .probe import http_ok
from .proc import wait_for

PORT = 5000
ENDPOINT = f"http://{MOTO}:{PORT}"


def start_moto(ctx: Context) -> dict[str, Any]:
    # No instance-metadata lookups by anything in moto's credential chain.
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
    started = ctx.spawn(
        "moto",
        [ctx.opts.moto_python, "-m", "moto.server", "-H", MOTO, "-p", str(PORT)],
        env=env,
    )
    wait_for(started, "HTTP answers", lambda: http_ok(f"{ENDPOINT}/moto-api/"), ctx.deadline())
    return {"endpoint": ENDPOINT}
