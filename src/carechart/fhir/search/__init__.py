"""FHIR R4 search (http://hl7.org/fhir/R4/search.html): index extraction on write, driven by
the official SearchParameter definitions, and queries over the index tables.

Public API used by the store and the router: :func:`compartment_patients`,
:func:`index_resource`, :func:`search`, :func:`search_ids_for_condition`,
:class:`SearchResult`, and :func:`confirm_blind_match` for exact confirmation of
blind-index candidates.
"""

from __future__ import annotations

from carechart.fhir.search.indexer import compartment_patients, index_resource, index_rows
from carechart.fhir.search.query import (
    SearchResult,
    blind_params,
    confirm_blind_match,
    confirm_candidate,
    search,
    search_ids_for_condition,
)

__all__ = [
    "SearchResult",
    "blind_params",
    "compartment_patients",
    "confirm_blind_match",
    "confirm_candidate",
    "index_resource",
    "index_rows",
    "search",
    "search_ids_for_condition",
]
