"""``_summary`` and ``_elements`` (http://hl7.org/fhir/R4/search.html#summary, #elements).

Both return a subset of each resource, marked with the SUBSETTED tag so a client never
mistakes it for the whole resource (search.html#summary: "the server SHOULD mark it").
Subsetting applies to top-level elements, which is what the base definitions' isSummary
flags describe for a resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from carechart.errors import BadRequest
from carechart.fhir.definitions import load_definitions

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
SUMMARY_MODES = ("true", "false", "text", "data", "count")
_ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True, slots=True)
class _TypeElements:
    names: frozenset[str]
    summary: frozenset[str]
    mandatory: frozenset[str]
    choices: frozenset[str]


@cache
def _elements_of(resource_type: str) -> _TypeElements:
    structure = load_definitions().structure(resource_type)
    names: set[str] = set()
    summary: set[str] = set()
    mandatory: set[str] = set()
    choices: set[str] = set()
    if structure is not None:
        for element in structure.elements:
            parts = element.path.split(".")
            if len(parts) != 2:
                continue
            name = parts[1]
            if name.endswith("[x]"):
                name = name[:-3]
                choices.add(name)
            names.add(name)
            if element.is_summary:
                summary.add(name)
            if element.min > 0:
                mandatory.add(name)
    return _TypeElements(
        frozenset(names), frozenset(summary), frozenset(mandatory), frozenset(choices)
    )


def _base_name(key: str, elements: _TypeElements) -> str:
    """``_birthDate`` → ``birthDate``; ``deceasedBoolean`` → ``deceased``."""
    name = key[1:] if key.startswith("_") else key
    if name in elements.names:
        return name
    for choice in elements.choices:
        if name.startswith(choice) and name[len(choice) : len(choice) + 1].isupper():
            return choice
    return name


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    return {**resource, "meta": meta}


def _keep(resource: dict[str, Any], wanted: frozenset[str] | set[str]) -> dict[str, Any]:
    elements = _elements_of(str(resource.get("resourceType")))
    kept = {
        key: value
        for key, value in resource.items()
        if key in _ALWAYS or _base_name(key, elements) in wanted
    }
    return _tagged(kept)


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """Apply ``_summary`` (true, text, data, false); ``count`` is handled by the caller."""
    if mode == "false":
        return resource
    elements = _elements_of(str(resource.get("resourceType")))
    if mode == "true":
        return _keep(resource, elements.summary | elements.mandatory)
    if mode == "text":
        return _keep(resource, elements.mandatory | {"text"})
    if mode == "data":
        return _tagged({k: v for k, v in resource.items() if k != "text"})
    raise BadRequest(f"_summary={mode!r} is not one of {', '.join(SUMMARY_MODES)}")


def parse_elements(resource_type: str, value: str) -> frozenset[str]:
    """The element names of an ``_elements`` value; unknown names are refused."""
    names = {part.strip() for part in value.split(",") if part.strip()}
    if not names:
        raise BadRequest("_elements needs at least one element name")
    known = _elements_of(resource_type).names
    unknown = sorted(n for n in names if n not in known and "." not in n)
    if unknown:
        raise BadRequest(f"_elements: {', '.join(unknown)} is not an element of {resource_type}")
    return frozenset(n for n in names if "." not in n)


def select_elements(resource: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """Apply ``_elements``: the named elements plus the mandatory ones."""
    elements = _elements_of(str(resource.get("resourceType")))
    return _keep(resource, names | elements.mandatory)


def check_summary(value: str) -> str:
    if value not in SUMMARY_MODES:
        raise BadRequest(f"_summary={value!r} is not one of {', '.join(SUMMARY_MODES)}")
    return value


@dataclass(frozen=True, slots=True)
class Shaping:
    """What ``_summary`` / ``_elements`` ask of each returned resource."""

    summary: str | None = None
    elements: frozenset[str] | None = None

    @property
    def whole(self) -> bool:
        return self.elements is None and self.summary in (None, "false")

    def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        if self.elements is not None:
            return select_elements(resource, self.elements)
        if self.summary is not None:
            return summarize(resource, self.summary)
        return resource


def shaping_from(resource_type: str, params: list[tuple[str, str]]) -> Shaping:
    summary: str | None = None
    elements: frozenset[str] | None = None
    for name, value in params:
        if name == "_summary":
            summary = check_summary(value)
        elif name == "_elements":
            elements = parse_elements(resource_type, value)
    if summary is not None and elements is not None:
        raise BadRequest("_summary and _elements cannot be combined")
    return Shaping(summary=summary, elements=elements)
