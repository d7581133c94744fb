"""Scenario 3: single-client sequential create and read rate of a Patient over HTTP.

One keep-alive ``http.client`` connection (client cost is small next to the server's), as a
backend service with ``system/*.cruds`` (``Authorization: Bearer``; every request is
authenticated, passes the policy point and is audited in the same transaction).
Creates: ``POST /fhir/Patient`` (201). Reads: ``GET /fhir/Patient/{id}`` (200) cycling over
the ids just created. Each figure is the median of several fixed-length windows.

Run alone: ``.venv/bin/python benchmarks/bench_crud.py [--window S] [--windows N]``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import benchlib as b


@dataclass
class CrudResult:
    engine: str
    create_rates: list[float] = field(default_factory=list)
    read_rates: list[float] = field(default_factory=list)
    create_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    body_bytes: int = 0


def _window(seconds: float, op: object) -> tuple[float, list[float]]:
    """Run ``op()`` repeatedly for ``seconds``; returns (ops/s, per-op latencies ms)."""
    assert callable(op)
    lat: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        op()
        t = time.perf_counter()
        lat.append((t - now) * 1000)
        now = t
    return len(lat) / (now - start), lat


def run(engine: str, window: float, windows: int) -> CrudResult:
    result = CrudResult(engine=engine)
    with b.server(engine) as srv:
        conn = srv.connection()
        ids: list[str] = []
        counter = [0]
        auth = [srv.auth()]

        def create() -> None:
            counter[0] += 1
            body = json.dumps(b.sample_patient(counter[0])).encode()
            status, headers, data = b.request(
                conn, "POST", "/fhir/Patient", body, {"Prefer": "return=minimal", **auth[0]}
            )
            b.expect(status, 201, data, "create Patient")
            ids.append(headers["location"].split("Patient/", 1)[1].split("/", 1)[0])

        cursor = [0]

        def read() -> None:
            rid = ids[cursor[0] % len(ids)]
            cursor[0] += 1
            status, _, data = b.request(conn, "GET", f"/fhir/Patient/{rid}", headers=auth[0])
            b.expect(status, 200, data, "read Patient")
            result.body_bytes = len(data)

        def timed(op: object) -> tuple[float, list[float]]:
            auth[0] = srv.auth(valid_for=window + 30)  # re-minted only near expiry
            return _window(window, op)

        try:
            _window(min(1.0, window), create)  # warm-up
            for _ in range(windows):
                rate, lat = timed(create)
                result.create_rates.append(rate)
                result.create_ms.extend(lat)
            _window(min(1.0, window), read)  # warm-up
            for _ in range(windows):
                rate, lat = timed(read)
                result.read_rates.append(rate)
                result.read_ms.extend(lat)
        finally:
            conn.close()
    b.log(
        f"crud {engine}: creates/s {b.fmt(b.median(result.create_rates))}, "
        f"reads/s {b.fmt(b.median(result.read_rates))}"
    )
    return result


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def report(results: list[CrudResult], window: float, windows: int) -> list[str]:
    lines = [
        "## 3. Create and read rate over HTTP (one client, sequential)",
        "",
        f"One keep-alive connection; {windows} windows of {window:g} s each, median of the "
        "windows. Create = `POST /fhir/Patient` with `Prefer: return=minimal` (~1 KB Patient, "
        "validated, sealed); read = `GET /fhir/Patient/{id}` cycling over the created ids. "
        "Caller: a backend service (`system/*.cruds` bearer token); each request is "
        "authenticated, guarded and audited.",
        "",
        "| engine | creates/s | create p50 / p99 ms | reads/s | read p50 / p99 ms | read body bytes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.engine} | **{b.fmt(b.median(r.create_rates))}** | "
            f"{b.fmt(_p(r.create_ms, 0.5), 2)} / {b.fmt(_p(r.create_ms, 0.99), 2)} | "
            f"**{b.fmt(b.median(r.read_rates))}** | "
            f"{b.fmt(_p(r.read_ms, 0.5), 2)} / {b.fmt(_p(r.read_ms, 0.99), 2)} | {r.body_bytes} |"
        )
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args()
    results = [run(e, args.window, args.windows) for e in ("sqlite", "postgresql")]
    print("\n".join(report(results, args.window, args.windows)))


if __name__ == "__main__":
    main()
