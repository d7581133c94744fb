"""SECURITY A3, A6: refresh-token rotation, family revocation, idle and absolute limits."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from carechart.auth.errors import Unauthorized
from carechart.auth.refresh import (
    IssuedRefresh,
    RefreshResult,
    SessionPolicy,
    check_session,
    logout,
    mark_mfa_passed,
    revoke_user_sessions,
    rotate_refresh_token,
    session_passed_mfa,
    start_session,
    token_digest,
)
from carechart.db.auth_schema import as_utc, auth_session, refresh_token
from carechart.db.engine import unit_of_work


def _start(engine: Engine, tenant: str, now: datetime, user: str = "u-1") -> IssuedRefresh:
    with unit_of_work(engine, write=True) as conn:
        # A first-party sign-in: no OAuth client (SMART sessions carry theirs).
        return start_session(conn, tenant=tenant, user_id=user, client_id=None, now=now)


def _rotate(
    engine: Engine, tenant: str, token: str, now: datetime, policy: SessionPolicy | None = None
) -> RefreshResult:
    # Each exchange is its own unit of work, committed, as the token endpoint will do.
    with unit_of_work(engine, write=True) as conn:
        return rotate_refresh_token(
            conn, tenant=tenant, presented=token, now=now, policy=policy or SessionPolicy()
        )


def test_refresh_issues_a_new_token_and_the_old_one_is_single_use(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    first = _start(auth_engine, tenant, now)
    second = _rotate(
        auth_engine, tenant, first.refresh_token, now + timedelta(minutes=1)
    ).raise_if_refused()
    assert second.refresh_token != first.refresh_token
    assert second.session_id == first.session_id
    assert second.absolute_expiry == now + timedelta(hours=12)
    again = _rotate(auth_engine, tenant, first.refresh_token, now + timedelta(minutes=2))
    assert again.refusal == "reused"


def test_reused_refresh_token_revokes_family(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    stolen = _start(auth_engine, tenant, now)
    legit = _rotate(
        auth_engine, tenant, stolen.refresh_token, now + timedelta(minutes=1)
    ).raise_if_refused()
    # The thief replays the old token: refused, and the family dies...
    assert (
        _rotate(auth_engine, tenant, stolen.refresh_token, now + timedelta(minutes=2)).refusal
        == "reused"
    )
    # ...so the token the legitimate client holds no longer works either.
    assert (
        _rotate(auth_engine, tenant, legit.refresh_token, now + timedelta(minutes=3)).refusal
        == "revoked"
    )
    with unit_of_work(auth_engine, write=True) as conn:
        assert check_session(conn, tenant=tenant, session_id=legit.session_id, now=now) == "revoked"
        reason = conn.execute(
            sa.select(auth_session.c.revoked_reason).where(
                auth_session.c.session_id == legit.session_id
            )
        ).scalar()
    assert reason == "refresh-token-reuse"


def test_reuse_does_not_touch_other_sessions(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    victim = _start(auth_engine, tenant, now)
    other = _start(auth_engine, tenant, now)
    _rotate(auth_engine, tenant, victim.refresh_token, now).raise_if_refused()
    _rotate(auth_engine, tenant, victim.refresh_token, now)
    assert _rotate(auth_engine, tenant, other.refresh_token, now).issued is not None


def test_refusal_raises_unauthorized(auth_engine: Engine, tenant: str, now: datetime) -> None:
    result = _rotate(auth_engine, tenant, "not-a-token", now)
    assert result.refusal == "unknown"
    with pytest.raises(Unauthorized) as caught:
        result.raise_if_refused()
    assert caught.value.status == 401


def test_refresh_token_of_another_tenant_is_refused(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    assert _rotate(auth_engine, tenant + "-other", issued.refresh_token, now).refusal == "unknown"


def test_refresh_token_is_stored_only_as_a_digest(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=False) as conn:
        rows = conn.execute(
            sa.select(refresh_token).where(refresh_token.c.tenant_id == tenant)
        ).all()
        sessions = conn.execute(
            sa.select(auth_session).where(auth_session.c.tenant_id == tenant)
        ).all()
    dump = repr(rows) + repr(sessions)
    assert issued.refresh_token not in dump
    assert token_digest(issued.refresh_token) in dump


def test_session_ends_after_30_idle_minutes(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    result = _rotate(
        auth_engine, tenant, issued.refresh_token, now + timedelta(minutes=30, seconds=1)
    )
    assert result.refusal == "idle"
    with unit_of_work(auth_engine, write=True) as conn:
        assert (
            check_session(conn, tenant=tenant, session_id=issued.session_id, now=now) == "revoked"
        )


def test_activity_keeps_a_session_alive_until_12_hours(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    token = _start(auth_engine, tenant, now).refresh_token
    moment = now
    while moment + timedelta(minutes=25) < now + timedelta(hours=12):
        moment += timedelta(minutes=25)
        token = _rotate(auth_engine, tenant, token, moment).raise_if_refused().refresh_token
    assert _rotate(auth_engine, tenant, token, now + timedelta(hours=12)).refusal == "expired"


def test_session_limits_are_configurable(auth_engine: Engine, tenant: str, now: datetime) -> None:
    policy = SessionPolicy(idle_timeout=timedelta(minutes=5), absolute_timeout=timedelta(hours=1))
    issued = _start(auth_engine, tenant, now)
    assert (
        _rotate(
            auth_engine, tenant, issued.refresh_token, now + timedelta(minutes=6), policy
        ).refusal
        == "idle"
    )


def test_check_session_touch_defers_idle_timeout(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=True) as conn:
        sid = issued.session_id
        assert (
            check_session(conn, tenant=tenant, session_id=sid, now=now + timedelta(minutes=20))
            is None
        )
        assert (
            check_session(conn, tenant=tenant, session_id=sid, now=now + timedelta(minutes=45))
            is None
        )
        assert (
            check_session(conn, tenant=tenant, session_id=sid, now=now + timedelta(minutes=80))
            == "idle"
        )


def test_logout_revokes_the_session_and_its_refresh_token(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=True) as conn:
        logout(conn, tenant=tenant, session_id=issued.session_id, now=now)
    with unit_of_work(auth_engine, write=True) as conn:
        assert (
            check_session(conn, tenant=tenant, session_id=issued.session_id, now=now) == "revoked"
        )
    assert _rotate(auth_engine, tenant, issued.refresh_token, now).refusal == "revoked"


def test_revoking_a_users_sessions_ends_all_of_them(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    first, second = _start(auth_engine, tenant, now), _start(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=True) as conn:
        assert (
            revoke_user_sessions(
                conn, tenant=tenant, user_id="u-1", now=now, reason="password-change"
            )
            == 2
        )
    assert _rotate(auth_engine, tenant, first.refresh_token, now).refusal == "revoked"
    assert _rotate(auth_engine, tenant, second.refresh_token, now).refusal == "revoked"


def test_session_records_that_mfa_was_passed(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=True) as conn:
        assert not session_passed_mfa(conn, tenant=tenant, session_id=issued.session_id)
        mark_mfa_passed(conn, tenant=tenant, session_id=issued.session_id)
        assert session_passed_mfa(conn, tenant=tenant, session_id=issued.session_id)
    rotated = _rotate(auth_engine, tenant, issued.refresh_token, now).raise_if_refused()
    assert rotated.mfa_passed


def test_concurrent_exchange_of_one_token_lets_exactly_one_through(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    barrier = threading.Barrier(4)
    results: list[RefreshResult] = []

    def exchange() -> None:
        barrier.wait()
        results.append(_rotate(auth_engine, tenant, issued.refresh_token, now))

    threads = [threading.Thread(target=exchange) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refusals = sorted(str(r.refusal) for r in results)
    # Once the first loser has revoked the family, later ones find it revoked.
    assert refusals[0] == "None"
    assert "reused" in refusals[1:]
    assert set(refusals[1:]) <= {"reused", "revoked"}
    # The reuse revoked the family, so even the winner's new token is dead.
    (winner,) = [r.issued for r in results if r.issued is not None]
    assert _rotate(auth_engine, tenant, winner.refresh_token, now).refusal == "revoked"


def test_activity_is_recorded_at_most_once_a_minute(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    issued = _start(auth_engine, tenant, now)
    s = auth_session
    for seconds, expected in ((30, now), (90, now + timedelta(seconds=90))):
        with unit_of_work(auth_engine, write=True) as conn:
            moment = now + timedelta(seconds=seconds)
            assert (
                check_session(conn, tenant=tenant, session_id=issued.session_id, now=moment) is None
            )
            recorded = conn.execute(
                sa.select(s.c.last_active_at).where(s.c.session_id == issued.session_id)
            ).scalar_one()
        assert as_utc(recorded) == expected
