"""Loading demo patients in batches, one unit of work each, here or in several processes.

Building, validating, sealing and indexing a resource is Python work that holds the GIL, so
one process keeps one core busy; on PostgreSQL several processes, each with its own engine
and its own units of work, load batches side by side. SQLite has a single writer, so there
the load stays in one process.

Processes are started with ``spawn``: the parent may already run threads (the progress bar)
and holds a connection pool, neither of which survives a ``fork`` safely.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import date

from carechart.config import Settings
from carechart.context import AppContext
from carechart.demo.clinic import Clinic, DemoResource, patient_chart, plan_clinic
from carechart.errors import CarechartError
from carechart.fhir.store import SqlResourceStore


class LoadInterrupted(CarechartError):
    status, code, fhir_code = 500, "DEMO_LOAD_INTERRUPTED", "exception"


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a worker process needs to rebuild the clinic and reach the database: settings
    (with the database URL the parent uses and the master key it was given), never objects
    that hold connections."""

    settings: Settings
    tenant: str
    seed: int
    patients: int
    as_of: date


# One per worker process, set by its initializer: the pool calls plain functions.
_state: tuple[AppContext, Clinic, str] | None = None


def _start(plan: WorkerPlan) -> None:
    global _state
    ctx = AppContext.from_settings(plan.settings)
    _state = (ctx, plan_clinic(plan.seed, plan.patients, plan.as_of), plan.tenant)


def create_resources(
    store: SqlResourceStore, resources: Iterable[DemoResource], created: Counter[str]
) -> None:
    """Through the store, so demo data is validated, sealed and indexed like any other; the
    ids were drawn by the generator, so the store batches the INSERTs."""
    for resource_type, resource_id, body in resources:
        store.create(resource_type, body, resource_id=resource_id)
        created[resource_type] += 1


def load_batch(
    ctx: AppContext,
    clinic: Clinic,
    tenant: str,
    start: int,
    stop: int,
    progress: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Patients ``start`` to ``stop - 1`` in one unit of work; the types created."""
    created: Counter[str] = Counter()
    with ctx.store(write=True, tenant=tenant) as store:
        for index in range(start, stop):
            create_resources(store, patient_chart(clinic, index), created)
            if progress is not None:
                progress(1)
    return created


def _load_batch_in_worker(start: int, stop: int) -> Counter[str]:
    assert _state is not None, "the worker was not initialised"
    ctx, clinic, tenant = _state
    return load_batch(ctx, clinic, tenant, start, stop)


def load_in_processes(
    plan: WorkerPlan,
    batches: list[tuple[int, int]],
    workers: int,
    progress: Callable[[int], None] | None,
) -> Counter[str]:
    """Load the batches with ``workers`` processes; the first failure stops the rest (batches
    already committed stay, as they would in one process) and is raised."""
    created: Counter[str] = Counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start, initargs=(plan,)
    ) as pool:
        pending: dict[Future[Counter[str]], int] = {
            pool.submit(_load_batch_in_worker, start, stop): stop - start for start, stop in batches
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    size = pending.pop(future)
                    created.update(future.result())
                    if progress is not None:
                        progress(size)
        except BrokenProcessPool:
            # A worker died (killed, out of memory, or a script that starts the load again
            # when imported without an ``if __name__ == "__main__"`` guard).
            pool.shutdown(wait=True, cancel_futures=True)
            raise LoadInterrupted(
                "a loading process ended unexpectedly; the batches it finished are stored"
            ) from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return created
