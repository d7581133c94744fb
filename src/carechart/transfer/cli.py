"""``carechart import`` and ``carechart export``: the operator's bulk way in and out.

Console output names no patient: progress shows counts, rejected files are named by their
number in the sorted listing and a digest prefix (file names can hold patient names, as
Synthea's do) unless the operator asks for names with ``--show-names``.

Exit codes: 0 done; 1 something was rejected (import) or a check failed (``export --verify``);
2 the command could not run (bad path, unknown type, unreachable database).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from carechart.context import AppContext
from carechart.transfer.importer import ImportReport, Rejection, file_sizes, import_files

console = Console(stderr=True)


def _say(message: str, *, problem: bool = False) -> None:
    # No markup: reasons and paths may hold brackets.
    console.print(
        message, style="red" if problem else None, markup=False, highlight=False, soft_wrap=True
    )


def _context() -> AppContext:
    from carechart.config import get_settings
    from carechart.db.migrate import upgrade

    ctx = AppContext.from_settings(get_settings())
    upgrade(ctx.engine)
    return ctx


def _file_label(rejection: Rejection, show_names: bool) -> str:
    if show_names:
        label = str(rejection.path)
    else:
        try:
            prefix = hashlib.sha256(rejection.path.read_bytes()).hexdigest()[:12]
        except OSError:
            prefix = "unreadable"
        label = f"file {rejection.file_number} (sha256 {prefix}…)"
    return label if rejection.line is None else f"{label}, line {rejection.line}"


def print_import_report(report: ImportReport, *, show_names: bool) -> None:
    table = Table(title="Imported")
    for header in ("resource type", "created", "updated", "already present"):
        table.add_column(header, justify="left" if header == "resource type" else "right")
    for resource_type in report.types:
        table.add_row(
            resource_type,
            f"{report.created[resource_type]:,}",
            f"{report.updated[resource_type]:,}",
            f"{report.unchanged[resource_type]:,}",
        )
    table.add_row(
        "total",
        f"{sum(report.created.values()):,}",
        f"{sum(report.updated.values()):,}",
        f"{sum(report.unchanged.values()):,}",
        style="bold",
    )
    console.print(table)
    if report.rejected:
        # Plain lines, not a table: a table would wrap paths and reasons mid-word.
        _say("Rejected (nothing of a rejected file or line was stored):", problem=True)
        for rejection in report.rejected:
            _say(f"  {_file_label(rejection, show_names)}: {rejection.reason}", problem=True)
    whole = sum(1 for r in report.rejected if r.line is None)
    lines = len(report.rejected) - whole
    _say(
        f"{report.files} file(s) read: {report.files - whole} imported, {whole} rejected"
        + (f", {lines} line(s) skipped" if lines else "")
        + (
            f"; {report.ignored} file(s) ignored (not .json, .ndjson or .jsonl)"
            if report.ignored
            else ""
        )
    )


def import_command(
    path: Annotated[
        Path,
        typer.Argument(help="A Bundle (.json) or NDJSON (.ndjson, .jsonl) file, or a directory."),
    ],
    tenant: Annotated[
        str | None, typer.Option(help="Territory to import into; the default tenant if unset.")
    ] = None,
    show_names: Annotated[
        bool,
        typer.Option(
            "--show-names",
            help="Name rejected files by path (paths can hold patient names; off by default).",
        ),
    ] = False,
) -> None:
    """Import FHIR Bundles (transaction, batch, collection) and NDJSON files; each file is
    stored whole or not at all, a bad NDJSON line is skipped, and a summary is printed."""
    from carechart.errors import CarechartError
    from carechart.transfer.importer import import_path

    try:
        files, _ = import_files(path)
    except CarechartError as error:
        _say(error.message, problem=True)
        raise typer.Exit(code=2) from None
    ctx = _context()
    try:
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("import", total=file_sizes(files))
            report = import_path(
                ctx, path, tenant=tenant, progress=lambda size: bar.advance(task, size)
            )
    finally:
        ctx.engine.dispose()
    print_import_report(report, show_names=show_names)
    if report.rejected:
        raise typer.Exit(code=1)


def export_command(
    out: Annotated[
        Path | None, typer.Option(help="New or empty directory to write the export to.")
    ] = None,
    verify: Annotated[
        Path | None,
        typer.Option(help="Check an export directory against its manifest instead."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Territory to export; the default tenant if unset.")
    ] = None,
    resource_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this type (repeatable).")
    ] = None,
) -> None:
    """Export a territory's current resources as NDJSON per type with a SHA-256 manifest
    (files 0600), or check one with --verify DIR."""
    from carechart.errors import CarechartError
    from carechart.transfer.exporter import export_tenant, verify_export

    if (out is None) == (verify is None):
        _say("give either --out DIR (export) or --verify DIR (check an export)", problem=True)
        raise typer.Exit(code=2)
    if verify is not None:
        if not verify.is_dir():
            _say("--verify needs an export directory", problem=True)
            raise typer.Exit(code=2)
        checked = verify_export(verify)
        for problem in checked.problems:
            _say(f"{problem.file}: {problem.reason}", problem=True)
        if not checked.ok:
            _say(f"export does NOT verify: {len(checked.problems)} problem(s)", problem=True)
            raise typer.Exit(code=1)
        _say(f"export verifies: {checked.files} file(s) match the manifest")
        return
    assert out is not None
    ctx = _context()
    try:
        with Progress(
            TextColumn("exporting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("resources"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("export", total=None)
            result = export_tenant(
                ctx,
                out,
                tenant=tenant,
                types=tuple(resource_type or ()),
                progress=lambda count: bar.advance(task, count),
            )
    except CarechartError as error:
        _say(error.message, problem=True)
        raise typer.Exit(code=2) from None
    finally:
        ctx.engine.dispose()
    table = Table(title=f"Exported territory {result.tenant}")
    table.add_column("file")
    table.add_column("resources", justify="right")
    table.add_column("sha256 (in full in manifest.json)")
    for exported in result.files:
        table.add_row(exported.name, f"{exported.count:,}", f"{exported.sha256[:16]}…")
    console.print(table)
    _say(f"{result.resources:,} resources in {len(result.files)} file(s); manifest.json lists them")
