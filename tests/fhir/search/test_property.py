"""Property: SQL search equals a brute-force Python evaluation of the spec's rules
(http://hl7.org/fhir/R4/search.html §3.1.1.5.1 prefixes, §3.1.1.5.5 token, §3.1.1.5.7 string)
over the same generated Observations, on both engines."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from carechart.crypto.keys import KeyRing
from carechart.fhir.search import search

SYSTEMS = ["http://loinc.org", "urn:local", None]
CODES = ["a1", "b2", "c3"]
WORDS = ["alpha", "alps", "beta", "Bétail", "gamma"]

# (year, month|None, day|None)
dates = st.tuples(
    st.integers(2019, 2021),
    st.one_of(st.none(), st.integers(1, 12)),
    st.integers(1, 28),
).map(lambda t: (t[0], t[1], t[2] if t[1] is not None else None))


def date_text(d: tuple[int, int | None, int | None]) -> str:
    y, m, day = d
    return f"{y:04d}" + (f"-{m:02d}" if m else "") + (f"-{day:02d}" if day else "")


def span(d: tuple[int, int | None, int | None]) -> tuple[datetime, datetime]:
    """[start, end) of the value's precision, computed independently of the code under test."""
    y, m, day = d
    if m is None:
        return datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC)
    if day is None:
        start = datetime(y, m, 1, tzinfo=UTC)
        return start, start + timedelta(days=calendar.monthrange(y, m)[1])
    start = datetime(y, m, day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def date_matches(prefix: str, r: tuple[datetime, datetime], q: tuple[datetime, datetime]) -> bool:
    (rl, rh), (ql, qh) = r, q
    eq = rl >= ql and rh <= qh
    return {
        "eq": eq,
        "ne": not eq,
        "gt": rh > qh,
        "lt": rl < ql,
        "ge": rh > qh or eq,
        "le": rl < ql or eq,
        "sa": rl >= qh,
        "eb": rh <= ql,
    }[prefix]


observations = st.fixed_dictionaries(
    {
        "codings": st.lists(
            st.tuples(st.sampled_from(SYSTEMS), st.sampled_from(CODES)), max_size=2
        ),
        "date": st.one_of(st.none(), dates),
        "word": st.one_of(st.none(), st.sampled_from(WORDS)),
    }
)


def to_fhir(spec: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"code": c, **({"system": s} if s else {})} for s, c in spec["codings"]]
        },
    }
    if spec["date"]:
        body["effectiveDateTime"] = date_text(spec["date"])
    if spec["word"]:
        body["valueString"] = spec["word"]
    return body


token_queries = st.tuples(
    st.sampled_from(["", "http://loinc.org|", "urn:local|", "|"]), st.sampled_from(CODES)
)
prefixes = st.sampled_from(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])


def fold(text: str) -> str:
    return text.lower().replace("é", "e")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(observations, min_size=1, max_size=6),
    token=token_queries,
    date_query=st.tuples(prefixes, dates),
    word=st.sampled_from(["al", "alp", "be", "BET", "g", "z"]),
    which=st.sampled_from(["token", "date", "string", "all"]),
)
def test_search_equals_brute_force(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    put: Callable[..., str],
    specs: list[dict[str, Any]],
    token: tuple[str, str],
    date_query: tuple[str, tuple[int, int | None, int | None]],
    word: str,
    which: str,
) -> None:
    savepoint = conn.begin_nested()
    try:
        ids = [put(to_fhir(spec)) for spec in specs]
        system, code = token
        prefix, qdate = date_query
        params: list[tuple[str, str]] = []
        checks: list[Callable[[dict[str, Any]], bool]] = []
        if which in ("token", "all"):
            params.append(("code", f"{system}{code}"))
            want_system = None if system == "" else (system[:-1] or None)

            def token_ok(spec: dict[str, Any]) -> bool:
                return any(
                    c == code and (system == "" or s == want_system) for s, c in spec["codings"]
                )

            checks.append(token_ok)
        if which in ("date", "all"):
            params.append(("date", prefix + date_text(qdate)))
            checks.append(
                lambda spec: (
                    spec["date"] is not None
                    and date_matches(prefix, span(spec["date"]), span(qdate))
                )
            )
        if which in ("string", "all"):
            params.append(("value-string", word))
            checks.append(
                lambda spec: spec["word"] is not None and fold(spec["word"]).startswith(fold(word))
            )
        expected = {
            rid for rid, spec in zip(ids, specs, strict=True) if all(c(spec) for c in checks)
        }
        result = search(conn, keyring, tenant, "Observation", params)
        assert set(result.ids) == expected
        assert result.total == len(expected)
    finally:
        savepoint.rollback()


GENDERS = ["male", "female", "other"]

patients = st.lists(
    st.tuples(st.sampled_from(GENDERS), st.booleans()),  # (gender, deleted)
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    people=patients,
    links=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(CODES)), max_size=6),
    gender=st.sampled_from(GENDERS),
    code=st.sampled_from(CODES),
)
def test_chain_and_has_equal_brute_force(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    put: Callable[..., str],
    people: list[tuple[str, bool]],
    links: list[tuple[int, str]],
    gender: str,
    code: str,
) -> None:
    """subject:Patient.gender (§3.1.1.6) and _has:Observation:subject:code (§3.1.1.6.1)
    over generated Patients (some deleted) and Observations pointing at them."""
    savepoint = conn.begin_nested()
    try:
        pids = [
            put({"resourceType": "Patient", "gender": g}, deleted=deleted) for g, deleted in people
        ]
        observations = []
        for target, obs_code in links:
            index = target % len(pids)
            body = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"code": obs_code}]},
                "subject": {"reference": f"Patient/{pids[index]}"},
            }
            observations.append((put(body), index, obs_code))

        def alive(i: int) -> bool:
            return not people[i][1]

        chained = search(conn, keyring, tenant, "Observation", [("subject:Patient.gender", gender)])
        assert set(chained.ids) == {
            oid for oid, i, _c in observations if alive(i) and people[i][0] == gender
        }
        reverse = search(
            conn, keyring, tenant, "Patient", [("_has:Observation:subject:code", code)]
        )
        assert set(reverse.ids) == {
            pids[i] for _oid, i, c in observations if c == code and alive(i)
        }
    finally:
        savepoint.rollback()
