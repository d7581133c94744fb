"""The ``carechart`` command."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from carechart.auth.cli import users_app
from carechart.config import get_settings

app = typer.Typer(
    help="Carechart: a FHIR R4 electronic health records server.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
console = Console(stderr=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Prepare the database and keys, then serve the API."""
    import uvicorn

    from carechart.context import AppContext
    from carechart.db.migrate import upgrade

    if not _is_loopback(host):
        # No authentication exists yet: PHI must not be reachable from another machine.
        console.print(
            f"[red]refusing to bind {host}: until authentication exists, serve binds loopback only"
        )
        raise typer.Exit(code=2)
    settings = get_settings()
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    ctx.keyring.active(settings.default_tenant)
    ctx.engine.dispose()
    console.print(f"Carechart serving on http://{host}:{port}  (FHIR at /fhir, API docs at /docs)")
    uvicorn.run(
        "carechart.asgi:app",
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (idempotent)."""
    from carechart.db.engine import make_engine
    from carechart.db.migrate import upgrade

    engine = make_engine(get_settings().effective_database_url)
    upgrade(engine)
    console.print("database schema is up to date")


def main() -> None:
    app()
