"""Search-index tables (owned by the search engine, :mod:`carechart.fhir.search`)."""

from __future__ import annotations

from carechart.db.schema import metadata

__all__ = ["metadata"]
