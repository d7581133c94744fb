"""Audit trail: the append-only, HMAC-chained record of every PHI action (SECURITY.md group C)."""
