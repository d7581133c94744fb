"""Loading the demo clinic into a tenant: resources through the store, staff accounts through
the identity service, one audit record per load.

The load is the server's own work (no access guard): it runs from the command line or when
``carechart serve --demo`` starts on an empty database. Resources are built in memory and
created through :class:`~carechart.fhir.store.SqlResourceStore`, so they are validated,
sealed and indexed exactly like anything a client writes; new resources are batched by the
store into one multi-row INSERT (COPY on PostgreSQL) per table and unit of work, and a unit
of work holds ``batch_size`` patients.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from carechart.audit.chain import AuditRecord, append
from carechart.auth import accounts
from carechart.auth.cli import CLI_CLIENT, create_user
from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.auth.service import validate_email
from carechart.context import AppContext
from carechart.db.engine import unit_of_work
from carechart.demo import repository
from carechart.demo.clinic import (
    DEFAULT_AS_OF,
    Clinic,
    StaffMember,
    email_domain,
    plan_clinic,
)
from carechart.demo.workers import WorkerPlan, create_resources, load_batch, load_in_processes
from carechart.errors import BadRequest, CarechartError, Conflict

#: The seed and size of the clinic ``carechart serve --demo`` creates on first run.
DEFAULT_SEED = 1
FIRST_RUN_PATIENTS = 50
BATCH_SIZE = 500
MAX_PATIENTS = 10_000_000
IMPORT_ACTION = "import"

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class DemoAccount:
    email: str
    role: Role
    full_name: str
    # Kept out of repr so that an accidental log line of the result shows no password.
    one_time_password: str = field(repr=False)
    practitioner_id: str | None = None


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    """The demo's staff accounts with their one-time passwords, to be shown once."""

    tenant: str
    accounts: tuple[DemoAccount, ...]


@dataclass(frozen=True, slots=True)
class DemoLoad:
    tenant: str
    seed: int
    patients: int
    created: dict[str, int]  # resources created, by type
    credentials: DemoCredentials
    seconds: float

    @property
    def resources(self) -> int:
        return sum(self.created.values())


def load_demo(
    ctx: AppContext,
    parts: AuthComponents,
    *,
    patients: int,
    seed: int = DEFAULT_SEED,
    tenant: str | None = None,
    as_of: date = DEFAULT_AS_OF,
    batch_size: int = BATCH_SIZE,
    workers: int = 1,
    progress: Progress | None = None,
) -> DemoLoad:
    """Create the demo clinic of ``seed`` with ``patients`` patients in ``tenant``.

    Staff accounts live in the identity tenant (the default tenant); when the data goes to
    another tenant they are given it as their territory. Raises ``Conflict`` when this seed's
    clinic, or one of its staff e-mail addresses, already exists. ``workers`` > 1 loads
    batches in that many processes on PostgreSQL (see :mod:`carechart.demo.workers`).
    """
    if not 1 <= patients <= MAX_PATIENTS:
        raise BadRequest(f"--patients must be between 1 and {MAX_PATIENTS:,}")
    if seed < 0:
        raise BadRequest("--seed must not be negative")
    started = time.perf_counter()
    identity_tenant = ctx.settings.default_tenant
    tenant = tenant or identity_tenant
    clinic = plan_clinic(seed, patients, as_of)
    domain = email_domain(seed, tenant)
    _check_free(ctx, clinic, tenant, identity_tenant, domain)

    created: Counter[str] = Counter()
    # The load's audit record commits with its first data (SECURITY C5): whatever part of the
    # load is committed is accounted for, even if a later batch fails.
    with ctx.store(write=True, tenant=tenant) as store:
        create_resources(store, clinic.resources, created)
        append(store.conn, ctx.keyring, tenant=tenant, record=_audit_record("success"))
    batches = [
        (start, min(patients, start + batch_size)) for start in range(0, patients, batch_size)
    ]
    try:
        if workers > 1 and len(batches) > 1 and ctx.engine.dialect.name == "postgresql":
            url = ctx.engine.url.render_as_string(hide_password=False)
            plan = WorkerPlan(
                ctx.settings.model_copy(update={"database_url": url}), tenant, seed, patients, as_of
            )
            created.update(load_in_processes(plan, batches, workers, progress))
        else:
            for start, stop in batches:
                created.update(load_batch(ctx, clinic, tenant, start, stop, progress))
    except Exception as error:
        ctx.audit(tenant, [_audit_record("failure")])
        if isinstance(error, CarechartError):
            error.message += (
                f"; the tenant holds part of the demo clinic of seed {seed}: load another "
                "seed, or into another tenant"
            )
        raise
    territories = () if tenant == identity_tenant else (tenant,)
    staff = tuple(
        _account(ctx, parts, member, domain, identity_tenant, territories)
        for member in clinic.staff
    )
    return DemoLoad(
        tenant=tenant,
        seed=seed,
        patients=patients,
        created=dict(sorted(created.items())),
        credentials=DemoCredentials(tenant, staff),
        seconds=time.perf_counter() - started,
    )


def ensure_demo_clinic(
    ctx: AppContext,
    parts: AuthComponents,
    patients: int = FIRST_RUN_PATIENTS,
    *,
    seed: int = DEFAULT_SEED,
) -> DemoCredentials | None:
    """On a first run (no user account and no Patient in the default tenant), load a small
    demo clinic and return its credentials to print; otherwise do nothing and return None."""
    tenant = ctx.settings.default_tenant
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=False) as conn:
        if repository.has_accounts(conn, tenant) or repository.has_patients(conn, tenant):
            return None
    return load_demo(ctx, parts, patients=patients, seed=seed, tenant=tenant).credentials


def _audit_record(outcome: str) -> AuditRecord:
    return AuditRecord(action=IMPORT_ACTION, outcome=outcome, client_id=CLI_CLIENT.client_id)


def _check_free(
    ctx: AppContext, clinic: Clinic, tenant: str, identity_tenant: str, domain: str
) -> None:
    """Refuse before writing anything when the clinic or a staff username is taken, so that
    a refused load leaves nothing behind."""
    with ctx.store(write=False, tenant=tenant) as store:
        if store.exists("Organization", clinic.organization_id):
            raise Conflict(
                f"the demo clinic of seed {clinic.seed} is already loaded in this tenant; "
                "choose another --seed or --tenant"
            )
    ctx.keyring.active(identity_tenant)
    with unit_of_work(ctx.engine, write=False) as conn:
        for member in clinic.staff:
            email = member.email(domain)
            if accounts.username_in_use(
                conn, ctx.keyring, tenant=identity_tenant, canonical_username=validate_email(email)
            ):
                raise Conflict(f"the demo account {email} already exists")


def _account(
    ctx: AppContext,
    parts: AuthComponents,
    member: StaffMember,
    domain: str,
    identity_tenant: str,
    territories: tuple[str, ...],
) -> DemoAccount:
    email = member.email(domain)
    made = create_user(
        ctx,
        parts,
        email=email,
        full_name=member.full_name,
        role=member.role,
        tenant=identity_tenant,
        practitioner_id=member.practitioner_id,
        territories=territories,
    )
    return DemoAccount(
        email=email,
        role=member.role,
        full_name=member.full_name,
        one_time_password=made.one_time_password,
        practitioner_id=member.practitioner_id,
    )
