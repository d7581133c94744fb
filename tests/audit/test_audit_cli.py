"""SECURITY C4 through the command an operator runs: ``carechart audit verify`` names the first
modified, inserted or deleted record; a signed checkpoint catches a cut-off tail."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result
from sqlalchemy.engine import Connection, Engine
from tests.audit.conftest import Seed
from typer.testing import CliRunner

from carechart.audit.chain import GENESIS, AuditRecord, StoredEvent, record_mac
from carechart.audit.cli import audit_app
from carechart.auth.tokens import SigningKey
from carechart.config import get_settings
from carechart.crypto.keys import MasterKey
from carechart.db.auth_schema import AUDIT_TRIGGER_SQL, audit_event
from carechart.db.engine import make_engine, unit_of_work
from carechart.db.migrate import upgrade
from carechart.db.schema import tenant_key

START = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)

Run = Callable[..., Result]


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        action="read",
        outcome="success",
        user_id=f"user-{n % 2}",
        role="physician",
        patient_id=f"pat-{n % 3}",
        resource_type="Observation",
        resource_id=f"obs-{n}",
        purpose_of_use="TREAT",
        correlation_id=f"c-{n}",
    )


def _chain(seed: Seed, count: int) -> list[StoredEvent]:
    return seed([(START + timedelta(minutes=n), _record(n)) for n in range(count)])


@pytest.fixture
def run(
    engine: Engine,
    tenant: str,
    master_key: MasterKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Run]:
    """Invoke ``carechart audit ...`` against the test database, as the operator would."""
    monkeypatch.setenv("CARECHART_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CARECHART_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("CARECHART_MASTER_KEY", base64.b64encode(master_key.key).decode())
    monkeypatch.setenv("CARECHART_DEFAULT_TENANT", tenant)
    get_settings.cache_clear()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(audit_app, list(args))

    yield invoke
    get_settings.cache_clear()


@contextmanager
def _as_attacker(engine: Engine) -> Iterator[Connection]:
    """A database superuser covering their tracks: the append-only triggers are lifted for
    one transaction and put back afterwards."""
    with unit_of_work(engine, write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE audit_event DISABLE TRIGGER ALL")
            yield conn
            conn.exec_driver_sql("ALTER TABLE audit_event ENABLE TRIGGER ALL")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_event_no_update")
            conn.exec_driver_sql("DROP TRIGGER audit_event_no_delete")
            yield conn
            for statement in AUDIT_TRIGGER_SQL["sqlite"]:
                conn.exec_driver_sql(statement)


def _row(tenant: str, index: int) -> sa.ColumnElement[bool]:
    return sa.and_(audit_event.c.tenant_id == tenant, audit_event.c.chain_index == index)


def _forged_hash() -> str:
    # What an attacker can compute without the tenant's key: a MAC under some other key.
    return record_mac(
        os.urandom(32), tenant="x", prev_hash=GENESIS, recorded_at=START, record=_record(0)
    )


def _shift_up_from(conn: Connection, tenant: str, index: int) -> None:
    """Make room at ``index`` (through negative numbers: PostgreSQL checks uniqueness row by
    row)."""
    t = audit_event
    later = sa.and_(t.c.tenant_id == tenant, t.c.chain_index >= index)
    conn.execute(t.update().where(later).values(chain_index=-(t.c.chain_index + 1)))
    negative = sa.and_(t.c.tenant_id == tenant, t.c.chain_index < 0)
    conn.execute(t.update().where(negative).values(chain_index=-t.c.chain_index))


def _tamper(conn: Connection, tenant: str, kind: str, events: list[StoredEvent]) -> None:
    t = audit_event
    if kind == "update-field":
        conn.execute(t.update().where(_row(tenant, 3)).values(patient_id="pat-someone-else"))
    elif kind == "delete-row":
        conn.execute(t.delete().where(_row(tenant, 3)))
    elif kind == "insert-forged-row":
        _shift_up_from(conn, tenant, 3)
        conn.execute(
            t.insert().values(
                tenant_id=tenant,
                chain_index=3,
                recorded_at=events[1].recorded_at,
                prev_hash=events[1].record_hash,
                record_hash=_forged_hash(),
                **dataclasses.asdict(dataclasses.replace(_record(9), user_id="user-framed")),
            )
        )
    elif kind == "rewrite-record-hash":
        conn.execute(t.update().where(_row(tenant, 3)).values(record_hash=_forged_hash()))
    else:
        raise AssertionError(kind)


def test_verify_accepts_an_untouched_chain(run: Run, seed: Seed) -> None:
    _chain(seed, 5)
    result = run("verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "audit chain OK: 5 records, head #5"


def test_verify_of_a_tenant_without_records_is_ok_and_creates_nothing(
    run: Run, engine: Engine, tenant: str
) -> None:
    result = run("verify", "--tenant", tenant + "-empty")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "audit chain OK: 0 records, head #0"
    with engine.connect() as conn:
        keys = conn.execute(
            sa.select(sa.func.count())
            .select_from(tenant_key)
            .where(tenant_key.c.tenant_id == tenant + "-empty")
        ).scalar_one()
    assert keys == 0


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("update-field", "BROKEN at record #3: modified"),
        ("delete-row", "BROKEN at record #3: deleted"),
        ("insert-forged-row", "BROKEN at record #3: inserted"),
        ("rewrite-record-hash", "BROKEN at record #3: modified"),
    ],
)
def test_verify_names_the_first_tampered_record(
    run: Run, engine: Engine, tenant: str, seed: Seed, kind: str, expected: str
) -> None:
    events = _chain(seed, 6)
    with _as_attacker(engine) as conn:
        _tamper(conn, tenant, kind, events)
    result = run("verify")
    assert result.exit_code == 1, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"audit chain {expected} — ")
    # Identifiers and indexes only: no record content is printed.
    assert "pat-" not in result.output
    assert "user-" not in result.output


def test_the_triggers_are_back_after_the_attack(
    run: Run, engine: Engine, tenant: str, seed: Seed
) -> None:
    events = _chain(seed, 3)
    with _as_attacker(engine) as conn:
        _tamper(conn, tenant, "update-field", events)
    with (
        pytest.raises(sa.exc.DatabaseError, match="append-only"),
        unit_of_work(engine, write=True) as conn,
    ):
        conn.execute(audit_event.delete().where(_row(tenant, 1)))
    assert run("verify").exit_code == 1


def test_a_checkpoint_catches_a_cut_off_tail(
    run: Run, engine: Engine, tenant: str, seed: Seed, tmp_path: Path
) -> None:
    _chain(seed, 5)
    saved = tmp_path / "checkpoint.jws"
    exported = run("checkpoint", "--out", str(saved))
    assert exported.exit_code == 0, exported.output
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().count(".") == 2
    intact = run("verify", "--checkpoint", str(saved))
    assert intact.exit_code == 0, intact.output
    assert intact.stdout.splitlines()[0] == "audit chain OK: 5 records, head #5"
    with _as_attacker(engine) as conn:
        conn.execute(
            audit_event.delete().where(
                audit_event.c.tenant_id == tenant, audit_event.c.chain_index >= 4
            )
        )
    # Without the checkpoint the shortened chain is internally consistent ...
    assert run("verify").exit_code == 0
    # ... with it, the missing tail is named.
    cut = run("verify", "--checkpoint", str(saved))
    assert cut.exit_code == 1, cut.output
    assert cut.stdout.startswith("audit chain BROKEN at record #4: deleted — ")


def test_checkpoint_is_printed_when_no_file_is_given_and_verifies_with_its_jwks(
    run: Run, seed: Seed, tmp_path: Path
) -> None:
    _chain(seed, 2)
    keys = tmp_path / "jwks.json"
    printed = run("checkpoint", "--jwks-out", str(keys))
    assert printed.exit_code == 0, printed.output
    token = printed.stdout.strip()
    assert token.count(".") == 2
    assert json.loads(keys.read_text())["keys"][0]["kty"] == "EC"
    saved = tmp_path / "cp.jws"
    saved.write_text(token)
    result = run("verify", "--checkpoint", str(saved), "--jwks", str(keys))
    assert result.exit_code == 0, result.output


def test_an_existing_checkpoint_file_is_narrowed_to_owner_only(
    run: Run, seed: Seed, tmp_path: Path
) -> None:
    _chain(seed, 1)
    saved = tmp_path / "cp.jws"
    saved.write_text("old")
    saved.chmod(0o644)
    assert run("checkpoint", "--out", str(saved)).exit_code == 0
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().count(".") == 2


def test_a_forged_checkpoint_cannot_be_used(
    run: Run, seed: Seed, tenant: str, tmp_path: Path
) -> None:
    _chain(seed, 3)
    impostor = SigningKey.generate()
    forged = tmp_path / "forged.jws"
    forged.write_text(
        impostor.sign(
            {"tenant": tenant, "chain_index": 1, "record_hash": "0" * 64, "iat": 0},
            typ="audit-checkpoint+jwt",
        )
    )
    result = run("verify", "--checkpoint", str(forged))
    assert result.exit_code == 2
    assert "does not verify" in result.output
    garbage = tmp_path / "garbage.jws"
    garbage.write_text("not a checkpoint")
    assert run("verify", "--checkpoint", str(garbage)).exit_code == 2
    assert run("verify", "--checkpoint", str(tmp_path / "missing.jws")).exit_code == 2


def test_a_checkpoint_of_another_tenant_is_refused(
    run: Run, seed: Seed, tenant: str, tmp_path: Path
) -> None:
    _chain(seed, 2)
    saved = tmp_path / "cp.jws"
    assert run("checkpoint", "--out", str(saved)).exit_code == 0
    result = run("verify", "--tenant", tenant + "-b", "--checkpoint", str(saved))
    assert result.exit_code == 2
    assert "use --tenant" in result.output


def test_no_checkpoint_is_signed_for_a_broken_chain(
    run: Run, engine: Engine, tenant: str, seed: Seed
) -> None:
    events = _chain(seed, 4)
    with _as_attacker(engine) as conn:
        _tamper(conn, tenant, "update-field", events)
    result = run("checkpoint")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "does not verify" in result.output


def test_all_tenants_reports_each_chain(
    run: Run, engine: Engine, tenant: str, seed: Seed, master_key: MasterKey
) -> None:
    from carechart.audit.chain import append
    from carechart.crypto.keys import KeyRing

    _chain(seed, 3)
    other = tenant + "-b"
    ring = KeyRing(master_key, engine)
    ring.active(other)
    with unit_of_work(engine, write=True) as conn:
        for n in range(4):
            append(conn, ring, tenant=other, record=_record(n), now=START)
    with _as_attacker(engine) as conn:
        conn.execute(audit_event.delete().where(_row(other, 2)))
    result = run("verify", "--all-tenants")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"tenant {tenant}: audit chain OK: 3 records, head #3" in lines
    assert any(
        line.startswith(f"tenant {other}: audit chain BROKEN at record #2: deleted")
        for line in lines
    )
    assert run("verify", "--tenant", tenant, "--all-tenants").exit_code == 2


def test_all_tenants_on_a_clean_database_exits_0(
    tmp_path: Path, master_key: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carechart.audit.chain import append
    from carechart.crypto.keys import KeyRing

    engine = make_engine(f"sqlite:///{tmp_path / 'clean.db'}")
    upgrade(engine)
    ring = KeyRing(master_key, engine)
    for name in ("alpha", "beta"):
        ring.active(name)
        with unit_of_work(engine, write=True) as conn:
            for n in range(2):
                append(conn, ring, tenant=name, record=_record(n), now=START)
    engine.dispose()
    monkeypatch.setenv("CARECHART_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CARECHART_DATABASE_URL", f"sqlite:///{tmp_path / 'clean.db'}")
    monkeypatch.setenv("CARECHART_MASTER_KEY", base64.b64encode(master_key.key).decode())
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(audit_app, ["verify", "--all-tenants"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "tenant alpha: audit chain OK: 2 records, head #2",
        "tenant beta: audit chain OK: 2 records, head #2",
    ]
