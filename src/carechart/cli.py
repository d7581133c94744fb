"""The ``carechart`` command."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from carechart.audit.cli import audit_app
from carechart.auth.cli import users_app
from carechart.config import get_settings
from carechart.demo.cli import demo_app
from carechart.integrations.hl7v2.cli import hl7_app, start_listener_thread
from carechart.transfer.cli import export_command, import_command

app = typer.Typer(
    help="Carechart: a FHIR R4 electronic health records server.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
search_app = typer.Typer(help="Search index maintenance.", no_args_is_help=True)
app.add_typer(search_app, name="search")
app.add_typer(audit_app, name="audit")
app.add_typer(hl7_app, name="hl7")
app.add_typer(demo_app, name="demo")
app.command("import")(import_command)
app.command("export")(export_command)
console = Console(stderr=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo/--no-demo",
            help="First run (no account, no Patient): load a small demo clinic and print its "
            "accounts once.",
        ),
    ] = False,
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
    if demo:
        from carechart.demo.cli import first_run

        first_run(ctx)
    ctx.engine.dispose()
    console.print(f"Carechart serving on http://{host}:{port}  (FHIR at /fhir, API docs at /docs)")
    listener = start_listener_thread(settings)  # MLLP, when CARECHART_HL7_PORT is set
    try:
        uvicorn.run(
            "carechart.asgi:app",
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
    finally:
        if listener is not None:
            listener.stop()


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


@db_app.command("create-app-role")
def db_create_app_role(
    name: Annotated[str, typer.Option(help="Role name (lower-case letters, digits, _).")] = (
        "carechart_app"
    ),
) -> None:
    """PostgreSQL: create the role the server should run as (may not alter the audit trail).

    Run with the owner's CARECHART_DATABASE_URL after `db upgrade`; then serve with a URL
    for this role. Set its password with CARECHART_APP_ROLE_PASSWORD (never on the command
    line, where it would land in shell history)."""
    import os

    from carechart.db.engine import make_engine
    from carechart.db.roles import create_app_role
    from carechart.errors import CarechartError

    engine = make_engine(get_settings().effective_database_url)
    try:
        create_app_role(engine, name, os.environ.get("CARECHART_APP_ROLE_PASSWORD"))
    except CarechartError as error:
        console.print(f"[red]{error.message}")
        raise typer.Exit(code=2) from None
    finally:
        engine.dispose()
    console.print(f"role {name}: data tables read/write, audit_event SELECT and INSERT only")


def _tenants(ctx: object, tenant: str | None, all_tenants: bool) -> list[str]:
    from carechart.context import AppContext

    assert isinstance(ctx, AppContext)
    if all_tenants:
        with ctx.store(write=False) as store:
            return store.tenants()
    return [tenant or ctx.settings.default_tenant]


@search_app.command("reindex")
def search_reindex(
    resource_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant (default: the default tenant).")
    ] = None,
    all_tenants: Annotated[bool, typer.Option("--all-tenants", help="Every tenant.")] = False,
) -> None:
    """Rebuild search indexes from the stored resources (after definitions or keys change)."""
    from rich.progress import Progress, TaskID

    from carechart.context import AppContext
    from carechart.db.migrate import upgrade
    from carechart.fhir.maintenance import reindex

    ctx = AppContext.from_settings(get_settings())
    upgrade(ctx.engine)
    if resource_type is not None and not _known_type(resource_type):
        console.print(f"[red]{resource_type} is not a resource type")
        raise typer.Exit(code=2)
    for name in _tenants(ctx, tenant, all_tenants):
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"re-indexing {name}", total=None)

            def advance(count: int, task: TaskID = task, bar: Progress = bar) -> None:
                bar.advance(task, count)

            done = reindex(ctx, name, resource_type, progress=advance)
        console.print(f"tenant {name}: re-indexed {done} resources")


@search_app.command("resize-blind-indexes")
def search_resize(
    tenant: Annotated[
        str | None, typer.Option(help="Tenant (default: the default tenant).")
    ] = None,
    all_tenants: Annotated[bool, typer.Option("--all-tenants", help="Every tenant.")] = False,
) -> None:
    """Size blind indexes from row counts so no token singles out one row."""
    from carechart.context import AppContext
    from carechart.db.migrate import upgrade
    from carechart.fhir.maintenance import resize_blind_indexes

    ctx = AppContext.from_settings(get_settings())
    upgrade(ctx.engine)
    for name in _tenants(ctx, tenant, all_tenants):
        for change in resize_blind_indexes(ctx, name):
            action = "re-indexed" if change.reindexed else "narrowed"
            console.print(
                f"tenant {name}: {change.resource_type}.{change.code} {change.rows} rows: "
                f"{change.old_bits} -> {change.new_bits} bits ({action})"
            )


def _known_type(resource_type: str) -> bool:
    from carechart.fhir.definitions import load_definitions

    return load_definitions().is_resource_type(resource_type)


def main() -> None:
    app()
