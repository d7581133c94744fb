"""Rate limits per IP, user and client, tighter on enumeration-prone routes (SECURITY F1, F2).

Wiring, in ``create_app``::

    app.add_middleware(install(app, build_limiter(settings), rules_from_settings(settings)))

and, after authentication, ``enforce_principal(request, f"user:{user_id}")``.
"""

from carechart.ratelimit.limiter import (
    Decision,
    InMemoryTokenBucket,
    MemoryRateLimiter,
    RateLimiter,
    Rule,
    Throttle,
    build_limiter,
)
from carechart.ratelimit.middleware import (
    RateLimitMiddleware,
    enforce_principal,
    enforce_principal_async,
    install,
)
from carechart.ratelimit.rules import RateLimitRules, RouteRule, rules_from_settings

__all__ = [
    "Decision",
    "InMemoryTokenBucket",
    "MemoryRateLimiter",
    "RateLimitMiddleware",
    "RateLimitRules",
    "RateLimiter",
    "RouteRule",
    "Rule",
    "Throttle",
    "build_limiter",
    "enforce_principal",
    "enforce_principal_async",
    "install",
    "rules_from_settings",
]
