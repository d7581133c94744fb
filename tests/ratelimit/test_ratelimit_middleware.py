"""The middleware and the per-principal check: on a small application, then on Carechart's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.testclient import TestClient
from tests.ratelimit.support import FakeClock

from carechart.app import create_app
from carechart.auth.errors import RateLimited
from carechart.context import AppContext
from carechart.ratelimit import (
    Decision,
    MemoryRateLimiter,
    RateLimitRules,
    Rule,
    enforce_principal,
    install,
)
from carechart.ratelimit.rules import parse_networks, sensitive_routes

PEER = ("203.0.113.7", 40000)


def rules(
    *, per_ip: int | None = 5, per_user: int | None = 4, sensitive: int = 2, proxies: str = ""
) -> RateLimitRules:
    return RateLimitRules(
        per_ip=Rule.per_minute("ip", per_ip) if per_ip else None,
        per_principal=Rule.per_minute("principal", per_user) if per_user else None,
        routes=sensitive_routes(sensitive),
        trusted_proxies=parse_networks(proxies),
    )


def small_app(limiter: Any, limits: RateLimitRules) -> FastAPI:
    app = FastAPI()

    def principal(request: Request) -> str:
        enforce_principal(request, "user:42")
        return "user:42"

    @app.exception_handler(RateLimited)
    async def on_limited(request: Request, exc: RateLimited) -> Response:
        return JSONResponse({"code": exc.code}, status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    @app.get("/metrics")
    @app.get("/fhir/Observation")
    @app.get("/fhir/Patient")
    @app.post("/fhir/Patient/_search")
    @app.get("/fhir/Patient/{patient_id}/$everything")
    @app.get("/fhir/$export")
    @app.get("/api/v1/fhir/Patient")
    @app.get("/api/v1/things")
    @app.post("/api/v1/auth/mfa/verify")
    async def anything() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/api/v1/mine")
    def mine(who: str = Depends(principal)) -> dict[str, str]:
        return {"who": who}

    app.add_middleware(install(app, limiter, limits))
    return app


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryRateLimiter:
    return MemoryRateLimiter(clock=clock)


@pytest.fixture
def http(limiter: MemoryRateLimiter) -> Iterator[TestClient]:
    with TestClient(small_app(limiter, rules()), client=PEER) as test_client:
        yield test_client


def test_over_the_ip_limit_fhir_answers_429_with_an_operation_outcome(http: TestClient) -> None:
    assert [http.get("/fhir/Observation").status_code for _ in range(5)] == [200] * 5
    refused = http.get("/fhir/Observation")
    assert refused.status_code == 429
    # 5 per minute: the next one in 12 seconds.
    assert refused.headers["retry-after"] == "12"
    assert refused.headers["content-type"].startswith("application/fhir+json")
    assert refused.headers["cache-control"] == "no-store"
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [issue["code"] for issue in outcome["issue"]] == ["throttled"]
    assert [issue["severity"] for issue in outcome["issue"]] == ["error"]
    # The FHIR alias is a FHIR path too.
    alias = http.get("/api/v1/fhir/Patient")
    assert alias.status_code == 429
    assert alias.json()["resourceType"] == "OperationOutcome"


def test_over_the_ip_limit_the_native_api_answers_its_envelope(http: TestClient) -> None:
    for _ in range(5):
        http.get("/api/v1/things")
    refused = http.get("/api/v1/things")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("application/json")
    body = refused.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == "RATE_LIMITED"
    assert body["error"]["message"]
    assert body["error"]["details"] == {"retry_after": int(refused.headers["retry-after"])}


def test_health_and_metrics_answer_while_the_ip_is_limited(http: TestClient) -> None:
    for _ in range(6):
        http.get("/api/v1/things")
    assert http.get("/api/v1/things").status_code == 429
    assert all(http.get("/health").status_code == 200 for _ in range(50))
    assert http.get("/metrics").status_code == 200


def test_the_limit_lifts_when_the_clock_advances(http: TestClient, clock: FakeClock) -> None:
    for _ in range(5):
        http.get("/api/v1/things")
    refused = http.get("/api/v1/things")
    assert refused.status_code == 429
    clock.advance(int(refused.headers["retry-after"]))
    assert http.get("/api/v1/things").status_code == 200


def test_ips_are_counted_apart(limiter: MemoryRateLimiter) -> None:
    app = small_app(limiter, rules())
    with (
        TestClient(app, client=("198.51.100.1", 1)) as one,
        TestClient(app, client=("198.51.100.2", 1)) as two,
    ):
        for _ in range(5):
            one.get("/api/v1/things")
        assert one.get("/api/v1/things").status_code == 429
        assert two.get("/api/v1/things").status_code == 200


def test_ipv6_clients_are_counted_per_64(limiter: MemoryRateLimiter) -> None:
    app = small_app(limiter, rules())
    with (
        TestClient(app, client=("2001:db8:1:1::1", 1)) as one,
        TestClient(app, client=("2001:db8:1:1::ffff", 1)) as same_network,
        TestClient(app, client=("2001:db8:1:2::1", 1)) as other_network,
    ):
        for _ in range(5):
            one.get("/api/v1/things")
        assert same_network.get("/api/v1/things").status_code == 429
        assert other_network.get("/api/v1/things").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/fhir/Patient", None),
        ("POST", "/fhir/Patient/_search", {"name": "x"}),
        ("GET", "/api/v1/fhir/Patient", None),
        ("GET", "/fhir/Patient/123/$everything", None),
        ("GET", "/fhir/$export", None),
        ("POST", "/api/v1/auth/mfa/verify", None),
    ],
)
def test_sensitive_routes_trip_before_the_ip_limit(
    http: TestClient, method: str, path: str, body: dict[str, str] | None
) -> None:
    statuses = [http.request(method, path, data=body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    # The IP still has its general allowance.
    assert http.get("/fhir/Observation").status_code == 200


def test_patient_search_by_get_post_and_alias_share_one_bucket(http: TestClient) -> None:
    assert http.get("/fhir/Patient").status_code == 200
    assert http.post("/fhir/Patient/_search").status_code == 200
    assert http.get("/api/v1/fhir/Patient").status_code == 429
    # Other sensitive routes have their own buckets.
    assert http.get("/fhir/Patient/123/$everything").status_code == 200


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    limiter: MemoryRateLimiter,
) -> None:
    app = small_app(limiter, rules())
    with TestClient(app, client=PEER) as http:
        for index in range(5):
            # A client cannot escape its limit by claiming to be someone else.
            headers = {"X-Forwarded-For": f"192.0.2.{index}"}
            assert http.get("/api/v1/things", headers=headers).status_code == 200
        assert (
            http.get("/api/v1/things", headers={"X-Forwarded-For": "192.0.2.99"}).status_code == 429
        )


def test_a_trusted_proxy_forwards_each_client_apart(limiter: MemoryRateLimiter) -> None:
    app = small_app(limiter, rules(proxies="10.0.0.0/8, 192.168.1.1"))
    with TestClient(app, client=("10.1.2.3", 1)) as proxy:

        def get(forwarded: str) -> int:
            return proxy.get("/api/v1/things", headers={"X-Forwarded-For": forwarded}).status_code

        for _ in range(5):
            assert get("198.51.100.1") == 200
        assert get("198.51.100.1") == 429
        # Read from the right, skipping trusted hops; what the client wrote on the left is
        # not believed.
        assert get("203.0.113.50, 198.51.100.1, 192.168.1.1") == 429
        assert get("198.51.100.1, 198.51.100.2") == 200


def test_the_principal_limit_applies_after_authentication(limiter: MemoryRateLimiter) -> None:
    with TestClient(small_app(limiter, rules(per_ip=100))) as http:
        statuses = [http.get("/api/v1/mine").status_code for _ in range(5)]
        refused = http.get("/api/v1/mine")
    assert statuses == [200] * 4 + [429]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "15"
    assert refused.json() == {"code": "RATE_LIMITED"}


def request_for(app: FastAPI, method: str, path: str) -> Request:
    return Request({"type": "http", "app": app, "method": method, "path": path, "headers": []})


def test_sensitive_routes_are_also_limited_per_principal(limiter: MemoryRateLimiter) -> None:
    app = small_app(limiter, rules(per_user=100))
    search = request_for(app, "GET", "/fhir/Patient")
    enforce_principal(search, "client:app-1")
    enforce_principal(search, "client:app-1")
    with pytest.raises(RateLimited) as caught:
        enforce_principal(search, "client:app-1")
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "30"
    # Another client, or another route, is not affected.
    enforce_principal(search, "client:app-2")
    enforce_principal(request_for(app, "GET", "/fhir/Observation"), "client:app-1")


@pytest.mark.parametrize("key", ["alice", "user:", "ip:10.0.0.1", "client"])
def test_principal_keys_name_a_user_or_a_client(limiter: MemoryRateLimiter, key: str) -> None:
    app = small_app(limiter, rules())
    with pytest.raises(ValueError):
        enforce_principal(request_for(app, "GET", "/fhir/Patient"), key)


def test_without_install_the_principal_check_does_nothing() -> None:
    app = FastAPI()
    for _ in range(1000):
        enforce_principal(request_for(app, "GET", "/fhir/Patient"), "user:1")


def test_turned_off_rules_limit_nothing(limiter: MemoryRateLimiter) -> None:
    app = small_app(limiter, rules(per_ip=None, per_user=None, sensitive=0))
    with TestClient(app) as http:
        assert all(http.get("/fhir/Patient").status_code == 200 for _ in range(100))
        assert all(http.get("/api/v1/mine").status_code == 200 for _ in range(100))


class BrokenLimiter:
    def hit(self, key: str, rule: Rule) -> Decision:
        raise RuntimeError("bug")

    async def hit_async(self, key: str, rule: Rule) -> Decision:
        raise RuntimeError("bug")

    def close(self) -> None:
        pass


def test_a_failing_limiter_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(small_app(BrokenLimiter(), rules())) as http:
        assert http.get("/fhir/Patient").status_code == 200
        assert http.get("/api/v1/mine").status_code == 200
    assert "RuntimeError" in caplog.text


class ClosingLimiter(MemoryRateLimiter):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_limiter_is_closed_when_the_app_shuts_down() -> None:
    limiter = ClosingLimiter()
    with TestClient(small_app(limiter, rules())) as http:
        http.get("/health")
        assert not limiter.closed
    assert limiter.closed


# --- on Carechart's application ------------------------------------------------------------


@pytest.fixture
def carechart(ctx: AppContext, clock: FakeClock) -> Iterator[TestClient]:
    app = create_app(ctx.settings, ctx)

    def probe(request: Request) -> dict[str, str]:
        enforce_principal(request, "user:probe")
        return {"ok": "yes"}

    app.add_api_route("/api/v1/rate-limit-probe", probe)
    app.add_middleware(install(app, MemoryRateLimiter(clock=clock), rules(per_ip=8, per_user=2)))
    with TestClient(app, raise_server_exceptions=False, client=PEER) as test_client:
        yield test_client


def test_carechart_answers_429_in_fhir_and_native_shapes(carechart: TestClient) -> None:
    assert [carechart.get("/fhir/metadata").status_code for _ in range(8)] == [200] * 8
    fhir = carechart.get("/fhir/metadata")
    assert fhir.status_code == 429
    assert int(fhir.headers["retry-after"]) >= 1
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    assert fhir.json()["issue"][0]["code"] == "throttled"
    alias = carechart.get("/api/v1/fhir/metadata")
    assert alias.status_code == 429
    assert alias.json()["resourceType"] == "OperationOutcome"
    native = carechart.get("/api/v1/auth/me")
    assert native.status_code == 429
    assert int(native.headers["retry-after"]) >= 1
    assert native.json()["error"]["code"] == "RATE_LIMITED"
    health = carechart.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_carechart_patient_search_trips_before_the_ip_limit(carechart: TestClient) -> None:
    # Whatever the route answers (it may want a token first), the limit comes before it.
    assert carechart.get("/fhir/Patient").status_code != 429
    assert carechart.get("/api/v1/fhir/Patient", params={"name": "x"}).status_code != 429
    refused = carechart.get("/fhir/Patient")
    assert refused.status_code == 429
    assert refused.json()["issue"][0]["code"] == "throttled"
    assert carechart.get("/fhir/metadata").status_code == 200
    assert carechart.get("/fhir/Patient/$everything").status_code != 429


def test_carechart_otp_route_trips_before_the_ip_limit(carechart: TestClient) -> None:
    body = {"mfa_ticket": "nope", "code": "000000"}
    statuses = [carechart.post("/api/v1/auth/mfa/verify", json=body).status_code for _ in range(3)]
    assert 429 not in statuses[:2]
    assert statuses[2] == 429


def test_carechart_renders_the_principal_limit(carechart: TestClient) -> None:
    assert carechart.get("/api/v1/rate-limit-probe").status_code == 200
    assert carechart.get("/api/v1/rate-limit-probe").status_code == 200
    refused = carechart.get("/api/v1/rate-limit-probe")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
