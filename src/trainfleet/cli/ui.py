"""``trainfleet ui [--host 127.0.0.1] [--port 8765]``: serve the dashboard; print its URL and token."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import typer

from trainfleet.cli import app
from trainfleet.errors import UsageError


@app.command("ui")
def ui_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless you mean it)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="TCP port (0: any free one)."),
    fleet_report: Path | None = typer.Option(
        None, "--fleet-report", metavar="FILE",
        help="Doctor JSON report for the fleet page (default $TRAINFLEET_HOME/fleet/latest.json)."),
) -> None:
    """Serve the dashboard: jobs, fleet, and /metrics for Prometheus. State changes need the printed token."""
    try:
        import uvicorn

        from trainfleet.web import create_app
    except ImportError as exc:
        raise UsageError(f"the dashboard needs the web extra: pip install 'trainfleet[web]' ({exc.name})"
                         ) from None
    from trainfleet.store import open_store, trainfleet_home
    from trainfleet.web.auth import load_or_create_token

    try:
        public = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        public = host != "localhost"
    home = trainfleet_home()
    token = load_or_create_token(home)
    store = open_store()
    web = create_app(store, home, token, fleet_report=fleet_report)
    config = uvicorn.Config(web, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    async def announce() -> None:
        # Print once the socket is bound, so port 0 shows the real port.
        for sock in (s for srv in server.servers for s in srv.sockets):
            bound = sock.getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            print(f"trainfleet ui: http://{shown}:{bound}/#token={token}", flush=True)
            print(f"  token file: {home / 'token'} (needed to cancel jobs and release nodes)", flush=True)
            break
        if public:
            print(f"trainfleet ui: warning: listening on {host}, not only on loopback", file=sys.stderr)

    original_startup = server.startup

    async def startup(sockets: list | None = None) -> None:
        await original_startup(sockets=sockets)
        await announce()

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        store.close()
