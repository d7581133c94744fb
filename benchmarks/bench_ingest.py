"""Scenario 2: ingest of transaction Bundles over HTTP (resources/s), SQLite and PostgreSQL.

The Synthea bundles (real FHIR transaction Bundles with urn:uuid references) are POSTed to
``/fhir`` of a real ``carechart serve`` process, one after another from one client. Each
round POSTs the whole set; every POST creates new ids, so each round ingests fresh data. The
client is a backend service (``system/*.cruds`` bearer token): every Bundle is authenticated,
checked entry by entry by the policy point and audited (one record per resource) in its
transaction.
Reported per engine: median resources/s over the rounds (wall clock), resources per CPU-second
of the server process (its cost on one core, insensitive to the noise of a shared machine),
and the server's peak resident memory (sampled RSS and kernel VmHWM).

Run alone: ``.venv/bin/python benchmarks/bench_ingest.py [--rounds N] [--engine E]``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as b

SYNTHEA_DIR = Path("/work/shared/data/synthea")
TARGET_PER_CORE = 1500
TARGET_PEAK_MB = 500


@dataclass
class IngestResult:
    engine: str
    bundles: int
    resources_per_round: int
    megabytes_per_round: float
    rounds: list[float] = field(default_factory=list)  # resources/s (wall)
    cpu_rates: list[float] = field(default_factory=list)  # resources per server CPU-second
    bundle_ms: list[float] = field(default_factory=list)
    idle_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    vmhwm_mb: float = 0.0
    workers: int = 1

    @property
    def median_rate(self) -> float:
        return b.median(self.rounds)

    @property
    def median_cpu_rate(self) -> float:
        return b.median(self.cpu_rates)


def load_bundles(directory: Path = SYNTHEA_DIR) -> list[tuple[str, bytes, int]]:
    out = []
    for path in sorted(directory.glob("*.json")):
        raw = path.read_bytes()
        bundle = json.loads(raw)
        assert bundle.get("resourceType") == "Bundle"
        assert bundle.get("type") == "transaction", path
        out.append((path.name, raw, len(bundle.get("entry", []))))
    if not out:
        raise RuntimeError(f"no bundles in {directory}")
    return out


def run(engine: str, rounds: int, time_budget: float) -> IngestResult:
    bundles = load_bundles()
    result = IngestResult(
        engine=engine,
        bundles=len(bundles),
        resources_per_round=sum(n for _, _, n in bundles),
        megabytes_per_round=sum(len(raw) for _, raw, _ in bundles) / 1e6,
    )
    with b.server(engine) as srv:
        result.idle_rss_mb = srv.idle_rss_mb
        conn = srv.connection(timeout=300)
        try:
            # Warm-up: the smallest bundle, so first-request costs are not in round 1.
            name, raw, _ = min(bundles, key=lambda item: len(item[1]))
            status, _, data = b.request(conn, "POST", "/fhir", raw, srv.auth())
            b.expect(status, 200, data, f"warm-up {name}")
            deadline = time.monotonic() + time_budget
            with b.MemorySampler(srv.pid) as sampler:
                for i in range(rounds):
                    if i >= 2 and time.monotonic() > deadline:
                        b.log(f"ingest {engine}: time budget reached after {i} rounds")
                        break
                    auth = srv.auth(valid_for=300)  # a round takes seconds; minted outside it
                    cpu0 = b.cpu_seconds(srv.pid)
                    start = time.perf_counter()
                    for name, raw, n in bundles:
                        t0 = time.perf_counter()
                        status, _, data = b.request(conn, "POST", "/fhir", raw, auth)
                        b.expect(status, 200, data, f"POST {name}")
                        entries = json.loads(data).get("entry", [])
                        if len(entries) != n:
                            raise RuntimeError(f"{name}: {len(entries)} responses for {n} entries")
                        result.bundle_ms.append((time.perf_counter() - t0) * 1000)
                    elapsed = time.perf_counter() - start
                    cpu = b.cpu_seconds(srv.pid) - cpu0
                    rate = result.resources_per_round / elapsed
                    result.rounds.append(rate)
                    if cpu > 0:
                        result.cpu_rates.append(result.resources_per_round / cpu)
                    b.log(
                        f"ingest {engine} round {i + 1}: {rate:,.0f} resources/s "
                        f"({elapsed:.2f} s wall, {cpu:.2f} s server CPU)"
                    )
            result.peak_rss_mb = sampler.peak_mb
            result.vmhwm_mb = b.hwm_mb(srv.pid)
        finally:
            conn.close()
    return result


def report(results: list[IngestResult]) -> list[str]:
    if not results:
        return []
    first = results[0]
    lines = [
        "## 2. Ingest of transaction Bundles",
        "",
        f"{first.bundles} Synthea transaction Bundles ({first.resources_per_round:,} resources, "
        f"{first.megabytes_per_round:.1f} MB) POSTed sequentially by one client to `/fhir` of "
        "`carechart serve` (1 worker process) as a backend service (`system/*.cruds`); "
        "validation, encryption, the policy point and the audit trail on. "
        "Rounds = whole set; median over rounds.",
        "",
        "| engine | rounds | median resources/s (wall) | min–max | resources per server CPU-s "
        "| median bundle ms | idle RSS MB | peak RSS MB (sampled) | VmHWM MB | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_core = r.median_rate / r.workers
        peak = max(r.peak_rss_mb, r.vmhwm_mb)
        target = "–"
        if r.engine == "postgresql":
            target = (
                f"≥ {TARGET_PER_CORE:,}/s/core: wall {'met' if per_core >= TARGET_PER_CORE else 'MISSED'}"
                f", per CPU-s {'met' if r.median_cpu_rate >= TARGET_PER_CORE else 'MISSED'}; "
                f"< {TARGET_PEAK_MB} MB: {'met' if peak < TARGET_PEAK_MB else 'MISSED'}"
            )
        lines.append(
            f"| {r.engine} | {len(r.rounds)} | **{b.fmt(r.median_rate)}** | "
            f"{b.fmt(min(r.rounds, default=float('nan')))}–{b.fmt(max(r.rounds, default=float('nan')))} | "
            f"{b.fmt(r.median_cpu_rate)} | {b.fmt(b.median(r.bundle_ms))} | "
            f"{b.fmt(r.idle_rss_mb)} | {b.fmt(r.peak_rss_mb)} | {b.fmt(r.vmhwm_mb)} | {target} |"
        )
    lines += [
        "",
        "Resources/s per core = the wall figure (one server process, one core). "
        "'Per server CPU-s' divides by the CPU time the server process actually used "
        "(excludes PostgreSQL's and the client's CPU).",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    print("\n".join(report([run(e, args.rounds, 180) for e in engines])))


if __name__ == "__main__":
    main()
