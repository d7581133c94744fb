"""``carechart demo``: load the synthetic clinic, and print its staff accounts once.

One-time passwords are printed to standard output once, as a table, and are never stored in
clear or logged; every other line goes to standard error. The progress bar shows counts only.
"""

from __future__ import annotations

import os
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from carechart.context import AppContext
from carechart.demo.clinic import DEFAULT_AS_OF
from carechart.demo.service import (
    BATCH_SIZE,
    DEFAULT_SEED,
    DemoCredentials,
    DemoLoad,
    ensure_demo_clinic,
    load_demo,
)

demo_app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)

MAX_AUTO_WORKERS = 8
FIRST_SIGN_IN_NOTE = (
    "Each password must be changed at first sign-in: a one-time password allows nothing but "
    "choosing a new one (POST /api/v1/auth/change-password). They are not shown again."
)


@demo_app.callback()
def demo() -> None:
    """A synthetic clinic (providers, staff accounts, patients with charts) to try Carechart."""


def print_credentials(credentials: DemoCredentials, out: Console | None = None) -> None:
    """The accounts as a table (e-mail, role, one-time password) on standard output, once."""
    table = Table(title=f"Demo staff accounts (territory {credentials.tenant})")
    for header in ("e-mail", "role", "one-time password"):
        table.add_column(header, no_wrap=True)
    for account in credentials.accounts:
        table.add_row(account.email, account.role.value, account.one_time_password)
    # Wide enough that no cell is shortened: a cut password cannot be used.
    needed = 12 + sum(
        max(len(header), *(len(row) for row in cells))
        for header, cells in (
            ("e-mail", [a.email for a in credentials.accounts]),
            ("role", [a.role.value for a in credentials.accounts]),
            ("one-time password", [a.one_time_password for a in credentials.accounts]),
        )
    )
    target = out or Console()
    if target.width < needed:
        target = Console(file=target.file, width=needed)
    target.print(table)
    target.print(FIRST_SIGN_IN_NOTE, soft_wrap=True)


def print_summary(load: DemoLoad) -> None:
    table = Table(title=f"Demo clinic, seed {load.seed}, territory {load.tenant}")
    table.add_column("resource type")
    table.add_column("created", justify="right")
    for resource_type, count in load.created.items():
        table.add_row(resource_type, f"{count:,}")
    table.add_row("total", f"{load.resources:,}", style="bold")
    console.print(table)
    rate = load.patients / load.seconds if load.seconds else 0.0
    console.print(
        f"{load.patients:,} patients in {load.seconds:.1f} s ({rate:,.0f} patients/s, "
        f"{load.resources / load.seconds if load.seconds else 0.0:,.0f} resources/s)"
    )


def first_run(ctx: AppContext) -> None:
    """For ``carechart serve --demo``: on an empty database, load the small demo clinic and
    print its accounts once; otherwise do nothing."""
    from carechart.auth.config import from_context

    with console.status("first run: loading the demo clinic"):
        credentials = ensure_demo_clinic(ctx, from_context(ctx))
    if credentials is not None:
        console.print("first run: a demo clinic was loaded (carechart demo load makes larger ones)")
        print_credentials(credentials)


@demo_app.command("load")
def load_command(
    patients: Annotated[int, typer.Option(help="How many patients.", min=1)] = 1_000,
    seed: Annotated[int, typer.Option(help="The same seed gives the same clinic.", min=0)] = (
        DEFAULT_SEED
    ),
    tenant: Annotated[
        str | None, typer.Option(help="Territory to load into; the default tenant if unset.")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help=f"Date the data is dated up to (default {DEFAULT_AS_OF.isoformat()})."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Patients per unit of work.", min=1, max=10_000)
    ] = BATCH_SIZE,
    workers: Annotated[
        int,
        typer.Option(
            help="Processes loading batches side by side (PostgreSQL); 0: one per CPU, up to "
            f"{MAX_AUTO_WORKERS}.",
            min=0,
            max=64,
        ),
    ] = 0,
) -> None:
    """Load a synthetic clinic: providers with panels of patients with charts, and staff
    accounts whose one-time passwords are printed once."""
    from carechart.auth.config import from_context
    from carechart.config import get_settings
    from carechart.db.migrate import upgrade
    from carechart.errors import CarechartError

    try:
        day = date.fromisoformat(as_of) if as_of else DEFAULT_AS_OF
    except ValueError:
        console.print("[red]--as-of must be a date such as 2026-09-30")
        raise typer.Exit(code=2) from None
    ctx = AppContext.from_settings(get_settings())
    try:
        upgrade(ctx.engine)
        with Progress(
            TextColumn("loading the demo clinic"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("patients"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("patients", total=patients)
            load = load_demo(
                ctx,
                from_context(ctx),
                patients=patients,
                seed=seed,
                tenant=tenant,
                as_of=day,
                batch_size=batch_size,
                workers=workers or min(MAX_AUTO_WORKERS, os.cpu_count() or 1),
                progress=lambda count: bar.advance(task, count),
            )
    except CarechartError as error:
        console.print(error.message, style="red", markup=False, highlight=False)
        raise typer.Exit(code=1) from None
    finally:
        ctx.engine.dispose()
    print_summary(load)
    print_credentials(load.credentials)
