"""Which limits apply to a request (SECURITY F1, F2).

- per client IP, on every route but the health and metrics probes, which must stay
  answerable when a client (or a load balancer's own address) is over its limit;
- per authenticated user or OAuth client, checked after authentication;
- tighter, per IP and per user or client, on the routes that let a caller walk through many
  patients: Patient search, ``$everything``, ``$export``, and the OTP step of login, where
  guessing is the attack. Each of these has its own bucket, so exporting does not use up
  searching.

Routes are matched on method and the whole path, under both FHIR bases (``/fhir`` and the
alias ``/api/v1/fhir``), since the limits run before the alias is rewritten.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import Scope

from carechart.config import Settings
from carechart.ratelimit.limiter import Rule

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FHIR_BASE = r"(?:/api/v1)?/fhir"
EXEMPT_PATHS = frozenset({"/health", "/metrics"})
# An IPv6 host usually owns a whole /64: counting single addresses would let it rotate freely.
IPV6_PREFIX = 64

_READ = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})


@dataclass(frozen=True, slots=True)
class RouteRule:
    """``rule`` applies to requests whose method is in ``methods`` (None: any) and whose
    whole path matches ``pattern``."""

    rule: Rule
    pattern: re.Pattern[str]
    methods: frozenset[str] | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern.fullmatch(path) is not None


def _path(expression: str) -> re.Pattern[str]:
    # A trailing slash is routed too (redirect_slashes), so it must not dodge the rule.
    return re.compile(expression + "/?")


def sensitive_routes(limit_per_minute: int) -> tuple[RouteRule, ...]:
    """The enumeration-prone routes, ``limit_per_minute`` each (0: none)."""
    if limit_per_minute <= 0:
        return ()
    search = Rule.per_minute("patient-search", limit_per_minute)
    everything = Rule.per_minute("everything", limit_per_minute)
    export = Rule.per_minute("export", limit_per_minute)
    otp = Rule.per_minute("otp", limit_per_minute)
    return (
        RouteRule(search, _path(FHIR_BASE + r"/Patient"), _READ),
        RouteRule(search, _path(FHIR_BASE + r"/Patient/_search"), _POST),
        # Instance and type level; GET and POST are both valid ways to invoke operations.
        RouteRule(everything, _path(FHIR_BASE + r"/Patient(?:/[^/]+)?/\$everything")),
        # System, type (Patient/$export) and instance (Group/{id}/$export) level.
        RouteRule(export, _path(FHIR_BASE + r"(?:/[^/]+){0,2}/\$export")),
        RouteRule(otp, _path(r"/api/v1/auth/mfa/verify"), _POST),
    )


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.1, 192.168.0.0/16"`` → networks; a bad entry is a configuration error."""
    networks: list[IPNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"CARECHART_TRUSTED_PROXIES: {item!r} is not an IP or network"
            ) from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class RateLimitRules:
    per_ip: Rule | None
    per_principal: Rule | None
    routes: tuple[RouteRule, ...] = ()
    exempt_paths: frozenset[str] = EXEMPT_PATHS
    trusted_proxies: tuple[IPNetwork, ...] = field(default=())

    def is_exempt(self, path: str) -> bool:
        return path in self.exempt_paths

    def for_route(self, method: str, path: str) -> list[Rule]:
        """The route rules that apply, each once even if several patterns share it."""
        found: dict[str, Rule] = {}
        for route in self.routes:
            if route.rule.name not in found and route.matches(method, path):
                found[route.rule.name] = route.rule
        return list(found.values())

    def client_key(self, scope: Scope) -> str:
        """``ip:<address>`` of the client (``ip:<network>/64`` for IPv6)."""
        return ip_key(client_host(scope, self.trusted_proxies))


def rules_from_settings(settings: Settings) -> RateLimitRules:
    def rule(name: str, per_minute: int) -> Rule | None:
        return Rule.per_minute(name, per_minute) if per_minute > 0 else None

    return RateLimitRules(
        per_ip=rule("ip", settings.rate_limit_per_ip),
        per_principal=rule("principal", settings.rate_limit_per_user),
        routes=sensitive_routes(settings.rate_limit_sensitive),
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("["):
        # "[2001:db8::1]:443", as some proxies write IPv6 with a port.
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        # "203.0.113.7:5678": IPv4 with a port.
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def _forwarded_for(scope: Scope) -> list[str]:
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops.extend(part for part in value.decode("latin-1").split(",") if part.strip())
    return hops


def client_host(scope: Scope, trusted_proxies: tuple[IPNetwork, ...]) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy.

    Then X-Forwarded-For is read from the right (each proxy appends the address it saw),
    skipping trusted proxies; the first other address is the client. Anything left of it
    was written by the client and cannot be believed, so an unparsable hop stops the walk.
    """
    client = scope.get("client")
    host: str | None = client[0] if client else None
    if not trusted_proxies or host is None:
        return host
    peer = _address(host)
    if peer is None or not _trusted(peer, trusted_proxies):
        return host
    for hop in reversed(_forwarded_for(scope)):
        address = _address(hop)
        if address is None:
            break
        host = str(address)
        if not _trusted(address, trusted_proxies):
            break
    return host


def ip_key(host: str | None) -> str:
    if host is None:
        # No peer address (a Unix socket without a proxy header): one shared bucket.
        return "ip:unknown"
    address = _address(host)
    if address is None:
        return "ip:" + host
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False)
        return f"ip:{network}"
    return f"ip:{address}"
