"""``carechart users``: account commands for operators (SECURITY A1).

There are no default accounts. The first administrator is created here, with a random
one-time password printed once; the first sign-in can do nothing but change it, and the
administrator then enrols TOTP before any administrative operation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from carechart.auth.config import AuthComponents, from_context
from carechart.auth.principal import Role
from carechart.auth.service import ClientInfo, IdentityService, NewAccount
from carechart.context import AppContext
from carechart.db.engine import unit_of_work

users_app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)

CLI_CLIENT = ClientInfo(client_id="carechart-cli")


@users_app.callback()
def users() -> None:
    """User accounts. There are no default accounts: create the first administrator here."""


@dataclass(frozen=True, slots=True)
class CreatedAdmin:
    user_id: str
    one_time_password: str


def one_time_password() -> str:
    # 144 bits, URL-safe so it survives copy and paste; far above the 12-character minimum.
    return secrets.token_urlsafe(18)


def create_admin(
    ctx: AppContext,
    parts: AuthComponents,
    *,
    email: str,
    full_name: str,
    tenant: str | None = None,
) -> CreatedAdmin:
    """Create an administrator that must change its password at first sign-in.

    Raises ``UsernameTaken`` (409) when the e-mail is in use, after NFKC + casefold.
    """
    return create_user(ctx, parts, email=email, full_name=full_name, role=Role.admin, tenant=tenant)


def create_user(
    ctx: AppContext,
    parts: AuthComponents,
    *,
    email: str,
    full_name: str,
    role: Role,
    tenant: str | None = None,
    practitioner_id: str | None = None,
    patient_id: str | None = None,
    territories: tuple[str, ...] = (),
) -> CreatedAdmin:
    """Create an account of any role with a one-time password (changed at first sign-in)."""
    tenant = tenant or ctx.settings.default_tenant
    password = one_time_password()
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=True) as conn:
        service = IdentityService(conn, ctx.keyring, parts, tenant=tenant, now=parts.clock())
        user = service.create_account(
            NewAccount(
                email=email,
                full_name=full_name,
                role=role,
                password=password,
                must_change_password=True,
                practitioner_id=practitioner_id,
                patient_id=patient_id,
                territories=territories,
            ),
            actor=None,
            client=CLI_CLIENT,
        )
    return CreatedAdmin(user_id=user.id, one_time_password=password)


@users_app.command("create-admin")
def create_admin_command(
    email: Annotated[str, typer.Option(help="The administrator's e-mail address (the username).")],
    name: Annotated[str, typer.Option(help="Full name.")] = "Administrator",
    tenant: Annotated[str | None, typer.Option(help="Tenant; the default tenant if unset.")] = None,
) -> None:
    """Create an administrator and print its one-time password, once."""
    from carechart.config import get_settings
    from carechart.db.migrate import upgrade
    from carechart.errors import CarechartError

    settings = get_settings()
    ctx = AppContext.from_settings(settings)
    try:
        upgrade(ctx.engine)
        created = create_admin(ctx, from_context(ctx), email=email, full_name=name, tenant=tenant)
    except CarechartError as error:
        console.print(f"[red]{error.message}")
        raise typer.Exit(code=1) from None
    finally:
        ctx.engine.dispose()
    console.print(f"administrator created: {created.user_id}")
    console.print("sign in with this one-time password; you will be asked to change it:")
    # Printed to stdout once and never stored in clear; not logged.
    typer.echo(f"password: {created.one_time_password}")


@users_app.command("create")
def create_command(
    email: Annotated[str, typer.Option(help="The user's e-mail address (the username).")],
    role: Annotated[Role, typer.Option(help="Role in the role matrix (see the README).")],
    name: Annotated[str, typer.Option(help="Full name.")],
    practitioner_id: Annotated[
        str | None, typer.Option(help="Clinicians: the Practitioner resource id they are.")
    ] = None,
    patient_id: Annotated[
        str | None, typer.Option(help="Patient users: the Patient resource id they are.")
    ] = None,
    territory: Annotated[
        list[str] | None, typer.Option(help="A territory the user works in (repeatable).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant; the default tenant if unset.")] = None,
) -> None:
    """Create an account of any role and print its one-time password, once."""
    from carechart.config import get_settings
    from carechart.db.migrate import upgrade
    from carechart.errors import CarechartError

    settings = get_settings()
    ctx = AppContext.from_settings(settings)
    try:
        upgrade(ctx.engine)
        created = create_user(
            ctx,
            from_context(ctx),
            email=email,
            full_name=name,
            role=role,
            tenant=tenant,
            practitioner_id=practitioner_id,
            patient_id=patient_id,
            territories=tuple(territory or ()),
        )
    except CarechartError as error:
        console.print(f"[red]{error.message}")
        raise typer.Exit(code=1) from None
    finally:
        ctx.engine.dispose()
    console.print(f"{role.value} created: {created.user_id}")
    console.print("sign in with this one-time password; you will be asked to change it:")
    typer.echo(f"password: {created.one_time_password}")
