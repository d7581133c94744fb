"""What the search engine answers, per resource type, for the CapabilityStatement
(http://hl7.org/fhir/R4/capabilitystatement-definitions.html#CapabilityStatement.rest.resource.searchParam)
and for clients: exactly the parameters :func:`carechart.fhir.search.search` evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass

from carechart.fhir.definitions import load_definitions
from carechart.fhir.search.extract import composite_plans, plan_for

__all__ = ["SupportedParam", "supported_parameters"]

_TYPE_MODIFIERS: dict[str, tuple[str, ...]] = {
    "string": ("missing", "exact", "contains"),
    "token": ("missing", "not", "text", "of-type"),
    "date": ("missing",),
    "number": ("missing",),
    "quantity": ("missing",),
    "reference": ("missing", "identifier", "below", "[type]"),
    "uri": ("missing", "below", "above"),
}
_BLIND_MODIFIERS: dict[str, tuple[str, ...]] = {
    "string": ("missing", "exact"),
    "token": ("missing", "not", "of-type"),
    "date": ("missing",),
}


@dataclass(frozen=True, slots=True)
class SupportedParam:
    code: str
    #: The SearchParameter type (string, token, ..., composite).
    type: str
    #: The canonical URL of the SearchParameter definition.
    definition: str
    #: Modifiers accepted (``[type]`` stands for a reference's target types).
    modifiers: tuple[str, ...]
    #: A reference that chains (``code.param``, ``code:Type.param``) and _has can use.
    chainable: bool
    composite: bool
    #: Answered from a blind index: matches are candidates confirmed against the body.
    blind: bool
    documentation: str


def supported_parameters(resource_type: str) -> list[SupportedParam]:
    """Every search parameter of ``resource_type`` that search evaluates, sorted by code.

    Besides these, the result parameters ``_sort`` ``_count`` ``_offset`` ``_include``
    ``_revinclude`` (with ``:iterate``) and ``_has`` apply to every type.
    """
    definitions = load_definitions()
    plans = plan_for(resource_type)
    composites = composite_plans(resource_type)
    out: list[SupportedParam] = []
    for param in definitions.search_parameters(resource_type):
        if param.code == "_id":
            out.append(SupportedParam("_id", "token", param.url, ("not",), False, False, False, ""))
            continue
        plan = plans.get(param.code)
        if plan is not None:
            blind = plan.blind
            modifiers = (_BLIND_MODIFIERS if blind else _TYPE_MODIFIERS).get(plan.type, ())
            note = "PHI: blind-indexed, equality and prefix matching only" if blind else ""
            out.append(
                SupportedParam(
                    param.code,
                    plan.type,
                    param.url,
                    modifiers,
                    plan.type == "reference",
                    False,
                    blind,
                    note,
                )
            )
        elif param.code in composites:
            out.append(
                SupportedParam(
                    param.code,
                    "composite",
                    param.url,
                    (),
                    False,
                    True,
                    False,
                    "components matched within the same element",
                )
            )
    return sorted(out, key=lambda p: p.code)
