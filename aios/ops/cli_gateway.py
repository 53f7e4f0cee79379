"""``aios gateway``: serve the OpenAI-compatible gateway (:mod:`aios.gateway.server`) until Ctrl-C. Kept apart
from the server so that the ``aios`` command, which registers it, imports neither Starlette nor the SDK to start."""

from __future__ import annotations

import click


@click.command("gateway")
@click.option("--host", default=None, help="Address to listen on (default: AIOS_GATEWAY_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default: AIOS_GATEWAY_PORT, 8088).")
def gateway(host: str | None, port: int | None) -> None:
    """Serve the OpenAI-compatible API at http://HOST:PORT/v1 in front of the kernel (the running `aios up`, or
    AIOS_BROKER_URL): every request is a syscall of the agent whose key is its bearer token."""
    import uvicorn

    from aios.gateway.auth import AgentKeys
    from aios.gateway.server import create_app
    from aios.settings import discover, get_settings
    from aios.wire.errors import AIOSError

    settings = get_settings()
    if settings.broker_url is None:
        settings = discover(settings) or settings
    try:
        settings.require_broker()
        keys = AgentKeys(settings)  # the master key and the kernel's Redis: fail here, not on the first request
    except AIOSError as exc:
        raise click.ClickException(exc.message) from None
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    click.echo(f"aios gateway: http://{host}:{port}/v1 (Ctrl-C stops)", err=True)
    app = create_app(settings, keys=keys)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=30)
