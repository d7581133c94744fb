"""Index extraction: resource -> typed index rows, driven by the R4 SearchParameters.

For each resource type the plan (one compiled FHIRPath per parameter) is built once. Each
value an expression selects becomes rows of the table for the parameter's type, following
the datatype mappings of http://hl7.org/fhir/R4/search.html §3.1.1.5 "Search Parameter
Types" (string: HumanName/Address parts; token: Coding, CodeableConcept, Identifier,
ContactPoint, code, boolean; date: date/dateTime/instant/Period/Timing; quantity:
Quantity/Range/Money; reference: Reference, canonical, uri).

PHI parameters (:data:`BLIND_PARAMS`) produce no plaintext rows: they produce *blind keys*,
tagged normalised values ("p:smi" = a name prefix, "v:555..." = a telecom value), which the
indexer turns into truncated HMACs (:mod:`carechart.crypto.blind`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from carechart.db.search_schema import FLOAT_END, HIGH_END, LOW_END, TEXT_LEN, URI_LEN
from carechart.fhir.definitions import SearchParamDef, load_definitions
from carechart.fhir.search.fhirpath import CompiledPath, Node, compile_path, split_union
from carechart.fhir.search.normalize import normalize_text, parse_date, phone_digits, soundex

__all__ = [
    "BLIND_PARAMS",
    "BLIND_TYPES",
    "INDEXED_TYPES",
    "PREFIX_MAX",
    "ComponentPlan",
    "CompositePlan",
    "ParamPlan",
    "blind_keys_for_values",
    "blind_token_value",
    "composite_plans",
    "extract",
    "identifier_index_code",
    "plan_for",
    "reference_identifiers",
    "reference_parts",
]

#: Search parameter types with index tables (composite and special are not indexed).
INDEXED_TYPES = frozenset({"string", "token", "date", "number", "quantity", "reference", "uri"})
#: Resource types whose PHI parameters are indexed only through blind tokens.
BLIND_TYPES = frozenset({"Patient", "Person", "RelatedPerson", "Practitioner"})
BLIND_PARAMS = frozenset(
    {
        "name", "family", "given", "phonetic", "address", "address-city", "address-country",
        "address-postalcode", "address-state", "address-use", "telecom", "phone", "email",
        "birthdate", "identifier",
    }
)  # fmt: skip
#: Name/address prefixes are blind-indexed up to this many characters; a longer search
#: prefix is looked up by its first PREFIX_MAX characters (a candidate, confirmed by body).
#: Eight characters tell most names apart already; each extra length is another row per
#: name part (the Patient index was 20 kB at 16), and the body confirms longer prefixes.
PREFIX_MAX = 8
#: Parameters answered from the resource table, not index rows.
_NOT_INDEXED = frozenset({"_id"})
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


@dataclass(frozen=True, slots=True)
class ParamPlan:
    code: str
    type: str
    path: CompiledPath
    #: True when values are indexed only as blind tokens (PHI).
    blind: bool
    definition: SearchParamDef
    #: Top-level element names the expression starts from (a choice's base name, like
    #: "value", stands for "valueQuantity" …); None when that cannot be told. Lets extraction
    #: skip, without evaluating, the many parameters whose elements a resource lacks.
    root_keys: tuple[str, ...] | None = None


_BRANCH_ROOT = re.compile(r"^\(*\s*([A-Z][A-Za-z]*)\.([a-z][A-Za-z]*)")


_CAMEL_CUT = re.compile(r"(?=[A-Z])")


def _present_names(resource: dict[str, Any]) -> set[str]:
    """Every top-level key and each of its camel-case prefixes ("valueQuantity" gives
    "value" too), so a choice element's base name is found by set membership."""
    names: set[str] = set()
    for key in resource:
        names.add(key)
        parts = _CAMEL_CUT.split(key)
        for i in range(1, len(parts)):
            names.add("".join(parts[:i]))
    return names


#: FHIRPath that yields a value (a boolean) even when the elements it names are absent:
#: ``Patient.deceased.exists() and Patient.deceased != false`` is ``false`` for a patient
#: without ``deceased``, and ``deceased=false`` must find that patient.
_BOOLEAN_RESULT = re.compile(r"\b(?:exists|empty|not)\(|\b(?:and|or|implies|xor)\b|=")


def _outside_where(expression: str) -> str:
    """``expression`` without the arguments of its ``where(...)`` calls (a criterion's
    booleans filter the focus; they are not the result)."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(expression):
        if depth == 0 and expression.startswith("where(", i):
            out.append("where(")
            depth, i = 1, i + len("where(")
            continue
        ch = expression[i]
        if depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
        if not depth:
            out.append(ch)
        i += 1
    return "".join(out)


def _root_keys(expression: str, resource_type: str) -> tuple[str, ...] | None:
    if _BOOLEAN_RESULT.search(_outside_where(expression)):
        return None
    keys: list[str] = []
    for branch in split_union(expression):
        match = _BRANCH_ROOT.match(branch)
        if match is None:
            return None
        if match.group(1) not in (resource_type, "Resource", "DomainResource"):
            continue
        keys.append(match.group(2))
    return tuple(dict.fromkeys(keys))


@cache
def plan_for(resource_type: str) -> dict[str, ParamPlan]:
    """The indexed parameters of ``resource_type``, by code (compiled once per process)."""
    plans: dict[str, ParamPlan] = {}
    for param in load_definitions().search_parameters(resource_type):
        if param.type not in INDEXED_TYPES or not param.expression or param.code in _NOT_INDEXED:
            continue
        blind = resource_type in BLIND_TYPES and param.code in BLIND_PARAMS
        path = compile_path(param.expression, resource_type)
        roots = _root_keys(param.expression, resource_type)
        plans[param.code] = ParamPlan(param.code, param.type, path, blind, param, roots)
    return plans


@dataclass(frozen=True, slots=True)
class ComponentPlan:
    """One component of a composite: its own parameter type and an expression evaluated
    on the composite's focus element (search.html §3.1.1.5.8, SearchParameter.component)."""

    type: str
    path: CompiledPath
    definition: SearchParamDef


@dataclass(frozen=True, slots=True)
class CompositePlan:
    code: str
    #: The focus elements (``Observation | Observation.component``); each one is a group.
    path: CompiledPath
    components: tuple[ComponentPlan, ...]
    definition: SearchParamDef
    root_keys: tuple[str, ...] | None = None


def identifier_index_code(code: str) -> str:
    """Blind-index code of a reference parameter's Reference.identifier values (the
    ``:identifier`` modifier, §3.1.1.5.6): "subject" -> "subject:identifier"."""
    return code + ":identifier"


@cache
def composite_plans(resource_type: str) -> dict[str, CompositePlan]:
    """The composite parameters of ``resource_type`` whose components are all indexable
    (none is a PHI parameter of a blind type), by code."""
    definitions = load_definitions()
    by_url = {p.url: p for p in definitions.all_search_parameters()}
    plans: dict[str, CompositePlan] = {}
    for param in definitions.search_parameters(resource_type):
        if param.type != "composite" or not param.expression or not param.components:
            continue
        components: list[ComponentPlan] = []
        listed = [by_url.get(c.definition) for c in param.components]
        for component, listed_target in zip(param.components, listed, strict=True):
            target = _component_target(component.expression, listed_target, listed)
            if (
                target is None
                or target.type not in INDEXED_TYPES
                or (resource_type in BLIND_TYPES and target.code in BLIND_PARAMS)
            ):
                break
            components.append(
                ComponentPlan(target.type, compile_path(component.expression), target)
            )
        else:
            plans[param.code] = CompositePlan(
                param.code,
                compile_path(param.expression, resource_type),
                tuple(components),
                param,
                _root_keys(param.expression, resource_type),
            )
    return plans


_SIMPLE_PATH = re.compile(r"[a-z][A-Za-z]*")


def _component_target(
    expression: str, listed: SearchParamDef | None, all_listed: list[SearchParamDef | None]
) -> SearchParamDef | None:
    """The definition that types a composite component. R4 lists some pairs crosswise
    (DocumentReference-relationship gives ``code`` the reference ``relatesto`` and ``target``
    the token ``relation``): a component whose expression is a plain element name takes the
    listed definition whose own expression ends in that element, when exactly one does."""
    if not _SIMPLE_PATH.fullmatch(expression):
        return listed
    ending = "." + expression
    owning = [
        d
        for d in all_listed
        if d is not None
        and any(b.strip("() ").endswith(ending) for b in split_union(d.expression or ""))
    ]
    return owning[0] if len(owning) == 1 else listed


Rows = dict[str, list[dict[str, Any]]]


def extract(resource_type: str, resource: dict[str, Any]) -> tuple[Rows, dict[str, set[str]]]:
    """Index rows by table kind (without owner columns) and blind keys by parameter code.

    Every row has a ``grp`` key: None on ordinary rows; on a composite's component rows
    (code ``<composite>$<i>``) the ordinal of the focus element they were taken from.
    """
    rows: Rows = {}
    blind: dict[str, set[str]] = {}
    present = _present_names(resource)
    for code, plan in plan_for(resource_type).items():
        roots = plan.root_keys
        if roots is not None and present.isdisjoint(roots):
            continue
        nodes = plan.path.evaluate(resource)
        if not nodes:
            continue
        if plan.blind:
            keys = blind_keys_for_values(plan.type, code, nodes)
            if keys:
                blind[code] = keys
            continue
        out = rows.setdefault(plan.type, [])
        for row in _ROW_MAKERS[plan.type](nodes):
            row["code"] = code
            row["grp"] = None
            out.append(row)
        if plan.type == "reference":
            # Reference.identifier is a business identifier (often an MRN): blind only.
            keys = blind_keys_for_values("token", "identifier", reference_identifiers(nodes))
            if keys:
                blind[identifier_index_code(code)] = keys
    for code, composite in composite_plans(resource_type).items():
        roots = composite.root_keys
        if roots is not None and present.isdisjoint(roots):
            continue
        for group, (focus, _type) in enumerate(composite.path.evaluate(resource)):
            parts: list[list[dict[str, Any]]] = []
            for index, component in enumerate(composite.components):
                nodes = component.path.evaluate(focus, resource)
                made = list(_ROW_MAKERS[component.type](nodes))
                if not made:
                    break  # a group without every component can never match: no rows
                for row in made:
                    row["code"] = f"{code}${index}"
                    row["grp"] = group
                parts.append(made)
            else:
                for component, made in zip(composite.components, parts, strict=True):
                    rows.setdefault(component.type, []).extend(made)
    return rows, blind


def reference_identifiers(nodes: list[Node]) -> list[Node]:
    """The Reference.identifier values among reference nodes, as Identifier nodes."""
    return [
        (value["identifier"], "Identifier")
        for value, _type in nodes
        if isinstance(value, dict) and isinstance(value.get("identifier"), dict)
    ]


# -- string ----------------------------------------------------------------------------

_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_parts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in (*_NAME_PARTS, *_ADDRESS_PARTS[:-1], "display"):
            part = value.get(key)
            for item in part if isinstance(part, list) else [part]:
                if isinstance(item, str):
                    yield item


def _string_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        for part in _string_parts(value):
            yield {"value_norm": normalize_text(part)[:TEXT_LEN], "value_exact": part[:TEXT_LEN]}


# -- token -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    system: str | None
    value: str | None
    text: str | None = None
    type_system: str | None = None
    type_code: str | None = None


def _tokens(value: Any) -> Iterator[_Token]:
    if isinstance(value, bool):
        yield _Token(None, "true" if value else "false")
    elif isinstance(value, str):
        yield _Token(None, value)
    elif isinstance(value, int | Decimal):
        yield _Token(None, str(value))
    elif isinstance(value, dict):
        if "coding" in value or ("text" in value and "value" not in value and "code" not in value):
            for coding in value.get("coding", ()):
                if isinstance(coding, dict):
                    yield from _tokens(coding)
            if isinstance(value.get("text"), str):
                yield _Token(None, None, value["text"])
        elif (
            "code" in value
            or ("system" in value and "value" not in value)
            or ("display" in value and "reference" not in value)  # a Coding of display alone
        ):
            yield _Token(value.get("system"), value.get("code"), value.get("display"))
        elif "value" in value and value.get("system") in _CONTACT_SYSTEMS:
            # ContactPoint: the value is the token; its system (phone/email) is not a URI.
            yield _Token(None, _str(value.get("value")))
        elif "value" in value or "system" in value:
            kind = value.get("type")
            text = kind.get("text") if isinstance(kind, dict) else None
            codings = (
                [c for c in kind.get("coding", ()) if isinstance(c, dict)]
                if isinstance(kind, dict)
                else []
            )
            system, ident = _str(value.get("system")), _str(value.get("value"))
            if not codings:
                yield _Token(system, ident, text)
            for coding in codings:
                yield _Token(
                    system, ident, text, _str(coding.get("system")), _str(coding.get("code"))
                )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _cut(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]


def _token_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        for tok in _tokens(value):
            yield {
                "system": _cut(tok.system, URI_LEN),
                "value": _cut(tok.value, TEXT_LEN),
                "text_norm": _cut(normalize_text(tok.text), TEXT_LEN) if tok.text else None,
                "type_system": _cut(tok.type_system, URI_LEN),
                "type_code": _cut(tok.type_code, TEXT_LEN),
            }


# -- date ------------------------------------------------------------------------------


def _date_range(value: Any) -> tuple[int, int] | None:
    if isinstance(value, str):
        parsed = parse_date(value)
        return (parsed.low, parsed.high) if parsed else None
    if not isinstance(value, dict):
        return None
    if "start" in value or "end" in value:  # Period
        start = parse_date(value["start"]) if isinstance(value.get("start"), str) else None
        end = parse_date(value["end"]) if isinstance(value.get("end"), str) else None
        return (start.low if start else LOW_END, end.high if end else HIGH_END)
    events = [parse_date(e) for e in value.get("event", ()) if isinstance(e, str)]  # Timing
    spans = [e for e in events if e is not None]
    if spans:
        return (min(s.low for s in spans), max(s.high for s in spans))
    repeat = value.get("repeat")
    if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
        return _date_range(repeat["boundsPeriod"])
    return None


def _date_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        span = _date_range(value)
        if span is not None:
            yield {"low": span[0], "high": span[1]}


# -- number and quantity ---------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)


def _number_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        number = _num(value)
        if number is not None:
            yield {"low": number, "high": number}
        elif isinstance(value, dict) and ("low" in value or "high" in value):  # Range
            low = _num(_dict(value.get("low")).get("value"))
            high = _num(_dict(value.get("high")).get("value"))
            yield {
                "low": -FLOAT_END if low is None else low,
                "high": FLOAT_END if high is None else high,
            }


def _quantity_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        if not isinstance(value, dict):
            continue
        if "low" in value or "high" in value:  # Range: units from whichever end has them
            low, high = _dict(value.get("low")), _dict(value.get("high"))
            unit_of = low or high
            lo, hi = _num(low.get("value")), _num(high.get("value"))
            bounds = (-FLOAT_END if lo is None else lo, FLOAT_END if hi is None else hi)
        else:
            number = _num(value.get("value"))
            if number is None:
                continue
            bounds, unit_of = (number, number), value
            if "currency" in value:  # Money
                unit_of = {"system": "urn:iso:std:iso:4217", "code": value["currency"]}
        # Comparator quantities ("<5") are open-ended ranges.
        comparator = value.get("comparator")
        if comparator in ("<", "<="):
            bounds = (-FLOAT_END, bounds[1])
        elif comparator in (">", ">="):
            bounds = (bounds[0], FLOAT_END)
        yield {
            "low": bounds[0],
            "high": bounds[1],
            "system": _cut(_str(unit_of.get("system")), URI_LEN),
            "unit_code": _cut(_str(unit_of.get("code")), TEXT_LEN),
            "unit": _cut(_str(unit_of.get("unit")), TEXT_LEN),
        }


# -- reference and uri -----------------------------------------------------------------


def reference_parts(ref: str) -> tuple[str | None, str | None, str | None]:
    """(type, id, url) of a reference: "Patient/1" -> (Patient, 1, None);
    "http://x/fhir/Patient/1" -> (Patient, 1, the URL); a canonical -> (None, None, url)."""
    ref = ref.strip()
    absolute = "://" in ref or ref.startswith(("urn:", "#"))
    url = ref.split("|", 1)[0] if absolute else None
    parts = ref.split("|", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-2].isalpha() and parts[-1]:
        return parts[-2], parts[-1], url
    return None, None, url


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _reference_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        ref = value.get("reference") if isinstance(value, dict) else value
        if not isinstance(ref, str) or not ref or ref.startswith("#"):
            continue
        rtype, rid, url = reference_parts(ref)
        if rid is None and url is None and _ID.fullmatch(ref):
            # A bare id (a relative canonical like "library-fhir-helpers-predecessor"):
            # the [id] form of a reference search (§3.1.1.5.6) names it.
            rid = ref
        if rid is not None and len(rid) > 64:
            rid = None
        if rid is None and url is None:
            continue
        yield {"target_type": rtype, "target_id": rid, "url": _cut(url, URI_LEN)}


def _uri_rows(nodes: list[Node]) -> Iterator[dict[str, Any]]:
    for value, _type in nodes:
        if isinstance(value, str) and value:
            yield {"uri": value[:URI_LEN]}


_ROW_MAKERS = {
    "string": _string_rows,
    "token": _token_rows,
    "date": _date_rows,
    "number": _number_rows,
    "quantity": _quantity_rows,
    "reference": _reference_rows,
    "uri": _uri_rows,
}


# -- blind keys ------------------------------------------------------------------------


def blind_token_value(code: str, value: str) -> str:
    """Token values compare after normalising phone numbers (digits) and emails (case)."""
    if code == "phone":
        return phone_digits(value)
    if code == "email":
        return value.strip().casefold()
    return value


def blind_keys_for_values(param_type: str, code: str, nodes: list[Node]) -> set[str]:
    """Plaintext blind keys of a PHI parameter's values; only their HMACs are stored.

    string: "p:<prefix>" for each prefix (1..PREFIX_MAX chars) of each normalised part and
    "x:<part>" for :exact; phonetic: "s:<soundex>" of family and given names.
    token: "v:<value>", "sv:<system>|<value>", "s:<system>" and, per Identifier.type
    coding, "t:<type system>|<type code>|<value>" (:of-type).
    date (birthdate): "d:<yyyy>", "d:<yyyy-mm>", "d:<yyyy-mm-dd>" (equality at each precision).
    """
    keys: set[str] = set()
    for value, _type in nodes:
        if param_type == "string":
            if code == "phonetic":
                parts: list[Any] = []
                if isinstance(value, dict):
                    for key in ("family", "given"):
                        part = value.get(key)
                        parts.extend(part if isinstance(part, list) else [part])
                    if not any(isinstance(p, str) for p in parts) and isinstance(
                        value.get("text"), str
                    ):
                        # A name given only as text: its words are the family and given names.
                        parts = value["text"].split()
                keys.update("s:" + soundex(p) for p in parts if isinstance(p, str) and soundex(p))
                continue
            for part in _string_parts(value):
                norm = normalize_text(part)
                keys.update("p:" + norm[:k] for k in range(1, min(len(norm), PREFIX_MAX) + 1))
                keys.add("x:" + part)
        elif param_type == "token":
            for tok in _tokens(value):
                if tok.value is None:
                    if tok.system:  # an Identifier with a system and no value: system|
                        keys.add("s:" + tok.system)
                    continue
                val = blind_token_value(code, tok.value)
                keys.add("v:" + val)
                keys.add(f"sv:{tok.system or ''}|{val}")
                if tok.system:
                    keys.add("s:" + tok.system)
                if tok.type_system or tok.type_code:
                    keys.add(f"t:{tok.type_system or ''}|{tok.type_code or ''}|{val}")
        elif param_type == "date" and isinstance(value, str) and parse_date(value):
            text = value.strip()
            keys.update("d:" + text[:n] for n in (4, 7, 10) if len(text) >= n)
    return keys
