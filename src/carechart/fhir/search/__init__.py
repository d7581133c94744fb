"""FHIR R4 search (http://hl7.org/fhir/R4/search.html): index extraction on write, driven by
the official SearchParameter definitions, and queries over the index tables.

Public API used by the store and the router: :func:`compartment_patients`,
:func:`index_resource`, :func:`index_rows`, :func:`search`, :func:`search_ids_for_condition`,
:class:`SearchResult`; :func:`blind_params`, :func:`chain_blind_params`,
:func:`confirm_blind_match` and :func:`confirm_candidate` for exact confirmation of
blind-index candidates; :func:`includes` with :func:`parse_include_params` for
``_include``/``_revinclude``; :func:`supported_parameters` for the CapabilityStatement;
:func:`plan_blind_buckets` and :func:`blind_bits` for blind-index bucket sizing.
"""

from __future__ import annotations

from carechart.fhir.search.buckets import (
    BucketChange,
    blind_bits,
    plan_blind_buckets,
    planned_bits,
    record_bits,
)
from carechart.fhir.search.include import (
    MAX_ROUNDS,
    IncludeSpec,
    includes,
    parse_include,
    parse_include_params,
)
from carechart.fhir.search.indexer import compartment_patients, index_resource, index_rows
from carechart.fhir.search.query import (
    CONTROL_PARAMS,
    SearchResult,
    blind_params,
    chain_blind_params,
    confirm_blind_match,
    confirm_candidate,
    search,
    search_ids_for_condition,
)
from carechart.fhir.search.supported import SupportedParam, supported_parameters

__all__ = [
    "CONTROL_PARAMS",
    "MAX_ROUNDS",
    "BucketChange",
    "IncludeSpec",
    "SearchResult",
    "SupportedParam",
    "blind_bits",
    "blind_params",
    "chain_blind_params",
    "compartment_patients",
    "confirm_blind_match",
    "confirm_candidate",
    "includes",
    "index_resource",
    "index_rows",
    "parse_include",
    "parse_include_params",
    "plan_blind_buckets",
    "planned_bits",
    "record_bits",
    "search",
    "search_ids_for_condition",
    "supported_parameters",
]
