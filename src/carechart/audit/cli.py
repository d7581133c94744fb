"""``carechart audit``: verify the audit hash chain and export signed checkpoints (SECURITY C4;
ONC 170.315(d)(2)(ii) integrity of the audit log, 170.315(d)(10) auditing actions).

``verify`` walks each tenant's chain and names the first modified, inserted or deleted record;
given checkpoints (kept outside the database), it also proves the chain still reaches the
heads they pinned, which catches a cut-off tail. ``checkpoint`` signs the current head of a
verified chain (ES256, with the server's token-signing key).

Exit codes: 0 the chain verifies, 1 it is broken, 2 it could not be checked (bad checkpoint
file, unknown key, no database). Only indexes, counts and hashes are printed, never record
content.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.exc import DBAPIError

from carechart.audit.chain import (
    AuditChainBroken,
    ChainVerification,
    Checkpoint,
    export_checkpoint,
    read_checkpoint,
    verify,
)
from carechart.audit.reports import audit_tenants, has_events
from carechart.auth.config import from_context
from carechart.auth.errors import Unauthorized
from carechart.auth.tokens import (
    CLOCK_LEEWAY,
    SigningKeyStore,
    VerificationKeys,
    keys_from_jwks,
)
from carechart.context import AppContext
from carechart.crypto.keys import load_master_key
from carechart.db.engine import unit_of_work
from carechart.errors import CarechartError

audit_app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)


def _say(message: str, *, problem: bool = False) -> None:
    """To stderr, unwrapped and without markup: file names may hold brackets."""
    console.print(
        message,
        style="red" if problem else None,
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


# A checkpoint outlives the access tokens its key signed: any key ever used may verify one.
_CHECKPOINT_KEY_RETENTION = timedelta(days=365 * 100)


@audit_app.callback()
def audit() -> None:
    """The audit trail: verify its hash chain, export signed checkpoints."""


class CannotVerify(Exception):
    """The check itself could not run: exit 2, which is neither "intact" nor "broken"."""


@dataclass(frozen=True, slots=True)
class TenantResult:
    tenant: str
    verification: ChainVerification


def _context() -> AppContext:
    from carechart.config import get_settings

    return AppContext.from_settings(get_settings())


def _checkpoint_keys(ctx: AppContext, jwks_file: Path | None) -> VerificationKeys:
    if jwks_file is not None:
        try:
            return keys_from_jwks(json.loads(jwks_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            raise CannotVerify(f"{jwks_file} is not a readable JWKS") from None
    settings = ctx.settings
    master = load_master_key(
        settings.master_key, settings.master_key_file or settings.data_dir / "keys" / "master.key"
    )
    store = SigningKeyStore(master, published_for=_CHECKPOINT_KEY_RETENTION + CLOCK_LEEWAY)
    with unit_of_work(ctx.engine, write=False) as conn:
        return store.verification_keys(conn, datetime.now(UTC))


def _read_checkpoints(files: list[Path], keys: VerificationKeys) -> list[Checkpoint]:
    checkpoints = []
    for path in files:
        try:
            token = path.read_text().strip()
        except OSError:
            raise CannotVerify(f"cannot read checkpoint {path}") from None
        try:
            checkpoints.append(read_checkpoint(token, keys))
        except (Unauthorized, KeyError, ValueError, TypeError):
            raise CannotVerify(
                f"checkpoint {path} does not verify against the signing keys"
            ) from None
    return checkpoints


def _verify_tenant(ctx: AppContext, tenant: str, checkpoints: list[Checkpoint]) -> TenantResult:
    pinned = [c for c in checkpoints if c.tenant == tenant]
    try:
        # Loads the tenant key without creating one: verifying must not change the database.
        ctx.keyring.version(tenant, 1)
    except CarechartError:
        with unit_of_work(ctx.engine, write=False) as conn:
            empty = not has_events(conn, tenant)
        if empty and not pinned:
            return TenantResult(tenant, ChainVerification(tenant, 0, 0, "0" * 64, None))
        raise CannotVerify(f"tenant {tenant}: its data key cannot be loaded") from None
    with unit_of_work(ctx.engine, write=False) as conn:
        return TenantResult(tenant, verify(conn, ctx.keyring, tenant=tenant, checkpoints=pinned))


def _report(result: TenantResult, prefix: str) -> bool:
    outcome = result.verification
    tamper = outcome.first_tamper
    if tamper is None:
        typer.echo(f"{prefix}audit chain OK: {outcome.records} records, head #{outcome.head_index}")
        return True
    typer.echo(
        f"{prefix}audit chain BROKEN at record #{tamper.chain_index}: "
        f"{tamper.kind} — {tamper.message}"
    )
    return False


@audit_app.command("verify")
def verify_command(
    tenant: Annotated[str | None, typer.Option(help="Tenant; the default tenant if unset.")] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all-tenants", help="Every tenant that has audit records.")
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help="A checkpoint exported earlier; the chain must still reach its head. Repeatable."
        ),
    ] = None,
    jwks: Annotated[
        Path | None,
        typer.Option(help="JWKS to check checkpoints with, instead of the database's keys."),
    ] = None,
) -> None:
    """Walk the hash chain; exit 1 and name the first broken record if it does not verify."""
    if tenant is not None and all_tenants:
        _say("--tenant and --all-tenants exclude each other", problem=True)
        raise typer.Exit(code=2)
    ctx = _context()
    try:
        checkpoints: list[Checkpoint] = []
        if checkpoint:
            checkpoints = _read_checkpoints(checkpoint, _checkpoint_keys(ctx, jwks))
        if all_tenants:
            with unit_of_work(ctx.engine, write=False) as conn:
                names = sorted(set(audit_tenants(conn)) | {c.tenant for c in checkpoints})
        else:
            name = tenant or ctx.settings.default_tenant
            foreign = sorted({c.tenant for c in checkpoints} - {name})
            if foreign:
                raise CannotVerify(
                    f"a checkpoint is for tenant {foreign[0]}, not {name}; use --tenant"
                )
            names = [name]
        results = [_verify_tenant(ctx, name, checkpoints) for name in names]
    except CannotVerify as problem:
        _say(str(problem), problem=True)
        raise typer.Exit(code=2) from None
    except DBAPIError as error:
        _say(f"cannot read the audit trail ({type(error.orig).__name__})", problem=True)
        raise typer.Exit(code=2) from None
    finally:
        ctx.engine.dispose()
    if not results:
        _say("no tenant has audit records")
    intact = [_report(r, f"tenant {r.tenant}: " if all_tenants else "") for r in results]
    for pinned in checkpoints:
        if all(pinned.tenant != r.tenant or r.verification.ok for r in results):
            _say(
                f"checkpoint of tenant {pinned.tenant} at record #{pinned.chain_index} "
                f"(signed {pinned.issued_at.isoformat()}) is in the chain"
            )
    if not all(intact):
        raise typer.Exit(code=1)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, also when the file already existed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


@audit_app.command("checkpoint")
def checkpoint_command(
    tenant: Annotated[str | None, typer.Option(help="Tenant; the default tenant if unset.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the checkpoint here (mode 0600), not to stdout.")
    ] = None,
    jwks_out: Annotated[
        Path | None,
        typer.Option(help="Also write the public key that signed it, as a JWKS (mode 0600)."),
    ] = None,
) -> None:
    """Sign the head of the verified chain (compact JWS). Keep it outside the database."""
    ctx = _context()
    name = tenant or ctx.settings.default_tenant
    try:
        parts = from_context(ctx)
        # Created, if need be, in its own transaction: SQLite has a single writer.
        ctx.keyring.active(name)
        now = datetime.now(UTC)
        with unit_of_work(ctx.engine, write=True) as conn:
            signer = parts.signing_keys.active(conn, now)
            token = export_checkpoint(conn, ctx.keyring, tenant=name, signer=signer, now=now)
    except AuditChainBroken as broken:
        _say(f"{broken.message}; run `carechart audit verify`", problem=True)
        raise typer.Exit(code=1) from None
    except DBAPIError as error:
        _say(f"cannot read the audit trail ({type(error.orig).__name__})", problem=True)
        raise typer.Exit(code=2) from None
    finally:
        ctx.engine.dispose()
    if jwks_out is not None:
        _write_private(jwks_out, json.dumps({"keys": [signer.jwk()]}, indent=2) + "\n")
    if out is None:
        typer.echo(token)
    else:
        _write_private(out, token + "\n")
        _say(f"checkpoint of tenant {name} written to {out}")
