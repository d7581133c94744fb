"""Baseline for the reads-under-load scenario: the real app plus one trivial in-memory route.

``GET /bench/trivial`` answers a fixed FHIR Patient JSON held in memory (the bytes of a stored
Patient as the real read route returned them, so the size is the same), through the same
stack as the FHIR routes: ``carechart.app.create_app()`` (same middleware, exception
handlers, FastAPI routing) served by uvicorn with the options ``carechart serve`` uses.
The difference between this route and ``GET /fhir/Patient/{id}`` is the read path itself:
authentication of the bearer token (the trivial route checks none: wrk's ``Authorization``
header is ignored), negotiation, the thread pool hops, the policy point, the database round
trips, unsealing, the audit append and its commit, serialising.

Usage: ``python benchmarks/trivial_app.py --body-file F --port P`` with the same
``CARECHART_*`` environment as the server under test. Benchmark use only.
"""

from __future__ import annotations

import argparse
import os
import runpy
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("trivial_app binds loopback only")

    stub = os.environ.get("CARECHART_BENCH_STUB")
    if stub:  # see benchmarks/serve.py
        runpy.run_path(stub, run_name="carechart_bench_stub")

    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from carechart.app import create_app
    from carechart.config import get_settings
    from carechart.context import AppContext
    from carechart.db.migrate import upgrade

    body = args.body_file.read_bytes()
    # The same response headers as a read (values fixed): ETag and Last-Modified.
    headers = {"ETag": 'W/"1"', "Last-Modified": "Mon, 23 Nov 2026 12:00:00 GMT"}
    settings = get_settings()
    ctx = AppContext.from_settings(settings)  # as `carechart serve`: migrate, make keys
    upgrade(ctx.engine)
    ctx.keyring.active(settings.default_tenant)
    app = create_app(settings, ctx)

    async def trivial(_request: Request) -> Response:
        return Response(
            content=body, media_type="application/fhir+json; charset=utf-8", headers=headers
        )

    # A plain route at the head of the route table: the stack's ceiling for a route, and at
    # least as favourable a place as the FHIR read route's (which is a plain route too).
    app.router.routes.insert(0, Route("/bench/trivial", trivial, methods=["GET"]))

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
