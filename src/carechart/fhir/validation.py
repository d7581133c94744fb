"""Structural validation of FHIR R4 JSON resources on write, driven by the official definitions.

Implements the rules of the JSON representation (http://hl7.org/fhir/R4/json.html) and the
datatypes (http://hl7.org/fhir/R4/datatypes.html) against the base StructureDefinitions:

- ``resourceType`` present and a known, concrete resource type (json.html#resources);
- no unknown elements, including choice elements with a type suffix the element does not
  allow (json.html#choice, formats.html#choice);
- cardinality: arrays exactly for elements with max > 1, min/max counts, and no empty
  arrays/objects, ``null`` or empty strings (json.html#arrays, json.html#primitive);
- the JSON type and lexical form of every primitive, with the regexes of the specification and
  real calendar dates (datatypes.html#primitive);
- ``_element`` siblings carrying ``id``/``extension`` for primitives, with ``null`` alignment
  in arrays (json.html#primitive);
- exactly one ``value[x]`` per choice element, Extension with ``url`` and either a value or
  nested extensions (extensibility.html#Extension, ext-1);
- Reference.reference formats and target types (references.html#Reference);
- contained resources (references.html#contained): validated as resources, not nested, no
  ``meta.versionId``/``meta.lastUpdated``, and ``#id`` references resolve;
- resources nested in Bundle.entry.resource, Parameters.parameter.resource, validated in turn;
- required terminology bindings on code, Coding and CodeableConcept
  (terminologies.html#required), for value sets expandable from the package.

FHIRPath invariants (``ElementDefinition.constraint``) are not evaluated, except the few that
the JSON page states as rules (ext-1, dom-2, dom-4).

Messages never echo element values: resource content is PHI and issues end up in responses
and logs. Performance: the definitions are compiled once into per-type lookup tables
(:func:`_schema`), so validating a resource is dictionary lookups and precompiled regexes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from typing import Any

from carechart.errors import Issue
from carechart.fhir.definitions import Definitions, ElementDef, load_definitions

__all__ = ["validate_resource"]

_PRIMITIVE, _COMPLEX, _RESOURCE = 0, 1, 2
# What to check on a value after its structure: a required binding or a reference.
_HOOK_NONE, _HOOK_CODE, _HOOK_CODING, _HOOK_CONCEPT, _HOOK_REFERENCE = 0, 1, 2, 3, 4

#: datatypes.html#string: "strings SHALL NOT exceed 1MB in size" (1MB = 1024*1024 bytes;
#: characters are checked, which is a lower bound on UTF-8 size).
_MAX_STRING = 1024 * 1024
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_XHTML_NS = 'xmlns="http://www.w3.org/1999/xhtml"'

Check = Callable[[Any], str | None]


class _Field:
    """One JSON property of a type: everything needed to check it, resolved at load time."""

    __slots__ = (
        "check",
        "choice",
        "codes",
        "coding_codes",
        "hook",
        "kind",
        "many",
        "max",
        "min",
        "model",
        "name",
        "targets",
        "type_code",
        "value_set",
    )

    def __init__(self, name: str, type_code: str, element: ElementDef) -> None:
        self.name = name
        self.type_code = type_code
        self.min = element.min
        self.max = element.max
        self.many = element.max is None or element.max > 1
        self.kind = _COMPLEX
        self.check: Check | None = None
        self.model: _Model | None = None
        self.choice: str | None = None
        self.hook = _HOOK_NONE
        self.codes: frozenset[str] | None = None
        self.coding_codes: dict[str, frozenset[str]] | None = None
        self.value_set = ""
        self.targets: frozenset[str] | None = None


class _Model:
    """The JSON properties of one type or backbone element."""

    __slots__ = (
        "choice_types",
        "fields",
        "is_extension",
        "is_resource",
        "name",
        "required",
        "required_choices",
    )

    def __init__(self, name: str, *, is_resource: bool = False) -> None:
        self.name = name
        self.fields: dict[str, _Field] = {}
        self.required: list[_Field] = []
        self.required_choices: list[str] = []
        #: choice base name (``value``) -> allowed type codes, for error messages.
        self.choice_types: dict[str, tuple[str, ...]] = {}
        self.is_resource = is_resource
        self.is_extension = name == "Extension"


class _Schema:
    def __init__(
        self, models: dict[str, _Model], resources: frozenset[str], element: _Model
    ) -> None:
        self.models = models
        self.resource_types = resources
        self.element = element


# --- primitive checks (datatypes.html#primitive) -------------------------------------------


def _regex_check(pattern: str, what: str) -> Check:
    # The spec regexes use XML Schema classes, where \s is ASCII whitespace only; without
    # re.ASCII Python would treat e.g. a no-break space as whitespace and reject real text.
    fullmatch = re.compile(pattern, re.ASCII).fullmatch
    message = f"is not a valid {what}"

    def check(value: Any) -> str | None:
        if type(value) is not str:
            return f"must be a JSON string ({what})"
        if not value:
            return "must not be an empty string"
        if len(value) > _MAX_STRING:
            return "exceeds 1MB"
        if fullmatch(value) is None:
            return message
        return None

    return check


def _calendar_check(pattern: str, what: str) -> Check:
    """The spec regex plus a real calendar: ``2023-02-30`` matches the regex but is no date."""
    fullmatch = re.compile(pattern, re.ASCII).fullmatch
    message = f"is not a valid {what}"

    def check(value: Any) -> str | None:
        if type(value) is not str:
            return f"must be a JSON string ({what})"
        if fullmatch(value) is None:
            return message
        if len(value) >= 10:
            day = int(value[8:10])
            if day > 28:
                year, month = int(value[0:4]), int(value[5:7])
                leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
                limit = 29 if month == 2 and leap else _DAYS_IN_MONTH[month]
                if day > limit:
                    return f"is not a valid {what}: day out of range for the month"
        return None

    return check


def _check_boolean(value: Any) -> str | None:
    return None if value is True or value is False else "must be a JSON boolean"


def _integer_check(low: int, what: str) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"must be a JSON number without fraction or exponent ({what})"
        if value < low or value > _INT_MAX:
            return f"is out of range for {what}"
        return None

    return check


def _check_decimal(value: Any) -> str | None:
    if type(value) is int:
        return None
    # isinstance: jsonio parses to a Decimal subclass that remembers its text.
    if isinstance(value, Decimal) and value.is_finite():
        return None
    return "must be a JSON number (decimal)"


_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=]*").fullmatch
_WHITESPACE = re.compile(r"\s+")


def _check_base64(value: Any) -> str | None:
    """base64Binary; the spec regex ``(\\s*([0-9a-zA-Z\\+/=]){4}\\s*)+`` checked in linear time.

    The regex backtracks exponentially on long invalid input, so the same language (groups
    of four base64 characters, whitespace allowed) is checked by stripping whitespace.
    """
    if type(value) is not str:
        return "must be a JSON string (base64Binary)"
    if not value:
        return "must not be an empty string"
    compact = _WHITESPACE.sub("", value) if not value.isalnum() else value
    if len(compact) % 4 or _BASE64_CHARS(compact) is None:
        return "is not valid base64"
    return None


def _check_xhtml(value: Any) -> str | None:
    """narrative.html#xhtml: a single ``div`` element in the XHTML namespace."""
    if type(value) is not str:
        return "must be a JSON string (xhtml)"
    text = value.lstrip()
    if not text.startswith("<div"):
        return "must be an XHTML div element"
    end = text.find(">")
    if end < 0 or _XHTML_NS not in text[:end]:
        return "div must declare the XHTML namespace"
    return None


def _primitive_checks(regexes: dict[str, str]) -> dict[str, Check]:
    checks: dict[str, Check] = {
        "boolean": _check_boolean,
        "integer": _integer_check(_INT_MIN, "integer"),
        "unsignedInt": _integer_check(0, "unsignedInt"),
        "positiveInt": _integer_check(1, "positiveInt"),
        "decimal": _check_decimal,
        "base64Binary": _check_base64,
        "xhtml": _check_xhtml,
    }
    for name in ("date", "dateTime", "instant"):
        checks[name] = _calendar_check(regexes[name], name)
    for name in ("string", "markdown", "code", "id", "oid", "uuid", "time"):
        checks[name] = _regex_check(regexes[name], name)
    for name in ("uri", "url", "canonical"):
        # The spec regex is \S*; "+" because empty strings are never valid (json.html).
        checks[name] = _regex_check(r"\S+", name)
    return checks


# --- compiling the definitions --------------------------------------------------------------


def _choice_name(base: str, type_code: str) -> str:
    return base + type_code[0].upper() + type_code[1:]


def _build_schema(defs: Definitions) -> _Schema:
    checks = _primitive_checks(defs.primitive_regex)
    models: dict[str, _Model] = {
        name: _Model(name, is_resource=s.kind == "resource") for name, s in defs.structures.items()
    }
    for name, structure in defs.structures.items():
        if structure.kind == "primitive-type":
            continue  # primitives are JSON values; their id/extension use Element's model
        elements = structure.elements
        parents = {e.path.rsplit(".", 1)[0] for e in elements[1:]}
        by_path: dict[str, _Model] = {elements[0].path: models[name]}
        pending_refs: list[tuple[_Field, str]] = []
        for element in elements[1:]:
            parent_path, leaf = element.path.rsplit(".", 1)
            owner = by_path[parent_path]
            if element.path in parents:
                by_path[element.path] = _Model(element.path)
            for field in _fields(element, leaf, defs, models, by_path, checks):
                owner.fields[field.name] = field
                if element.content_reference:
                    pending_refs.append((field, element.content_reference.lstrip("#")))
            if element.min > 0:
                if element.is_choice:
                    owner.required_choices.append(leaf[:-3])
                else:
                    owner.required.append(owner.fields[leaf])
        for field, target in pending_refs:
            field.model = by_path[target]
    return _Schema(models, defs.resource_types, models["Element"])


def _fields(
    element: ElementDef,
    leaf: str,
    defs: Definitions,
    models: dict[str, _Model],
    by_path: dict[str, _Model],
    checks: dict[str, Check],
) -> list[_Field]:
    if element.content_reference:
        return [_Field(leaf, "BackboneElement", element)]
    if element.is_choice:
        base = leaf[:-3]
        owner = by_path[element.path.rsplit(".", 1)[0]]
        owner.choice_types[base] = tuple(t.code for t in element.types)
        fields = []
        for type_ in element.types:
            field = _typed_field(
                _choice_name(base, type_.code), type_.code, element, defs, models, checks
            )
            field.choice = base
            fields.append(field)
        return fields
    (type_,) = element.types
    field = _typed_field(leaf, type_.code, element, defs, models, checks)
    if element.path in by_path:  # a backbone element: its children define it
        field.model = by_path[element.path]
        field.kind = _COMPLEX
    return [field]


def _typed_field(
    name: str,
    type_code: str,
    element: ElementDef,
    defs: Definitions,
    models: dict[str, _Model],
    checks: dict[str, Check],
) -> _Field:
    field = _Field(name, type_code, element)
    structure = defs.structures[type_code]
    if structure.kind == "primitive-type":
        field.kind = _PRIMITIVE
        field.check = checks[type_code]
    elif type_code == "Resource":
        field.kind = _RESOURCE
    else:
        field.model = models[type_code]
    if type_code == "Reference":
        field.hook = _HOOK_REFERENCE
        targets = {t for type_ in element.types for t in type_.target_types}
        if targets and "Resource" not in targets:
            field.targets = frozenset(targets)
    binding = element.binding
    if binding is not None and binding.strength == "required" and binding.value_set:
        value_set = defs.value_set(binding.value_set)
        if value_set is not None and value_set.codes is not None:
            field.value_set = value_set.url
            if type_code == "code":
                field.hook = _HOOK_CODE
                field.codes = frozenset().union(*value_set.codes.values())
            elif type_code in ("Coding", "CodeableConcept"):
                field.hook = _HOOK_CODING if type_code == "Coding" else _HOOK_CONCEPT
                field.coding_codes = value_set.codes
    return field


@cache
def _schema() -> _Schema:
    return _build_schema(load_definitions())


# --- references (references.html) -----------------------------------------------------------

_ID = r"[A-Za-z0-9\-\.]{1,64}"
_RELATIVE = re.compile(rf"([A-Z][A-Za-z]+)/{_ID}(?:/_history/{_ID})?").fullmatch
_CONDITIONAL = re.compile(r"([A-Z][A-Za-z]+)\?\S*").fullmatch
_ABSOLUTE_TAIL = re.compile(
    rf"[a-zA-Z][a-zA-Z0-9+.\-]*://\S*/([A-Z][A-Za-z]+)/{_ID}(?:/_history/{_ID})?"
)
_ABSOLUTE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*:\S+").fullmatch
_UUID = re.compile(
    r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+").fullmatch
_SAFE_NAME = re.compile(r"[A-Za-z]{1,64}").fullmatch


class _Run:
    """One validation: collects issues and the local (``#id``) references of each resource."""

    __slots__ = ("issues", "schema", "scopes")

    def __init__(self, schema: _Schema) -> None:
        self.schema = schema
        self.issues: list[Issue] = []
        # One (local references, contained ids) pair per enclosing non-contained resource.
        self.scopes: list[tuple[list[tuple[str, str]], set[str]]] = []

    def error(self, message: str, expression: str | None) -> None:
        self.issues.append(Issue(message=message, expression=expression))

    def resource(self, obj: Any, path: str | None, contained: bool) -> None:
        """resource.html, json.html#resources: ``resourceType`` names a concrete type."""
        if type(obj) is not dict:
            self.error("A resource must be a JSON object", path)
            return
        resource_type = obj.get("resourceType")
        if resource_type is None:
            self.error("resourceType is missing", path)
            return
        if type(resource_type) is not str or resource_type not in self.schema.resource_types:
            shown = (
                f" {resource_type!r}"
                if type(resource_type) is str and _SAFE_NAME(resource_type)
                else ""
            )
            self.error(
                f"resourceType{shown} is not a known FHIR R4 resource type",
                path and f"{path}.resourceType",
            )
            return
        here = resource_type if path is None else path
        if contained:
            self.scopes[-1][1].add(obj["id"] if type(obj.get("id")) is str else "")
            self._check_contained(obj, here)
            self.object(obj, self.schema.models[resource_type], here)
            return
        self.scopes.append(([], set()))
        self.object(obj, self.schema.models[resource_type], here)
        references, contained_ids = self.scopes.pop()
        for target, where in references:
            # "#" alone refers to the container itself (references.html#contained).
            if target and target not in contained_ids:
                self.error("Local reference does not match the id of a contained resource", where)

    def _check_contained(self, obj: dict[str, Any], here: str) -> None:
        if "contained" in obj:
            # dom-2: contained resources SHALL NOT contain additional contained resources.
            self.error("A contained resource must not contain resources", f"{here}.contained")
        meta = obj.get("meta")
        if type(meta) is dict:
            # dom-4: a contained resource has no version or last-updated of its own.
            for key in ("versionId", "lastUpdated"):
                if key in meta:
                    self.error(
                        f"A contained resource must not have meta.{key}", f"{here}.meta.{key}"
                    )

    def object(self, obj: dict[str, Any], model: _Model, path: str) -> None:
        fields = model.fields
        chosen: dict[str, str] | None = None
        for key, value in obj.items():
            field = fields.get(key)
            if field is None:
                if key == "resourceType" and model.is_resource:
                    continue
                if key[:1] == "_":
                    owner = fields.get(key[1:])
                    if owner is not None and owner.kind == _PRIMITIVE:
                        self.primitive_extension(obj, value, owner, path)
                        if owner.choice is not None and key[1:] not in obj:
                            chosen = self._choose(chosen, owner, path)
                        continue
                self.unknown(key, model, path)
                continue
            if field.choice is not None:
                chosen = self._choose(chosen, field, path)
            if field.many:
                if type(value) is not list:
                    self.error("Element must be a JSON array", f"{path}.{key}")
                    continue
                if not value:
                    self.error("Arrays must not be empty", f"{path}.{key}")
                    continue
                if field.max is not None and len(value) > field.max:
                    self.error(f"At most {field.max} repetitions allowed", f"{path}.{key}")
                if field.kind == _PRIMITIVE:
                    self.primitive_list(obj, key, value, field, path)
                else:
                    for index, item in enumerate(value):
                        self.complex(item, field, f"{path}.{key}[{index}]")
            elif type(value) is list:
                self.error("Element must not be an array", f"{path}.{key}")
            elif field.kind == _PRIMITIVE:
                self.primitive(value, field, f"{path}.{key}")
            else:
                self.complex(value, field, f"{path}.{key}")
        for field in model.required:
            if field.name not in obj and "_" + field.name not in obj:
                self.error("Required element is missing", f"{path}.{field.name}")
        for base in model.required_choices:
            if chosen is None or base not in chosen:
                self.error(f"Required element {base}[x] is missing", f"{path}.{base}[x]")
        if model.is_extension:
            self._extension_content(obj, chosen, path)

    def _choose(self, chosen: dict[str, str] | None, field: _Field, path: str) -> dict[str, str]:
        """formats.html#choice: only one type of a choice element may be present."""
        base = field.choice
        assert base is not None
        if chosen is None:
            return {base: field.name}
        if base in chosen:
            self.error(f"Only one {base}[x] element is allowed", f"{path}.{field.name}")
        else:
            chosen[base] = field.name
        return chosen

    def _extension_content(
        self, obj: dict[str, Any], chosen: dict[str, str] | None, path: str
    ) -> None:
        """ext-1 (extensibility.html#Extension): a value or nested extensions, not both."""
        has_value = chosen is not None and "value" in chosen
        has_nested = "extension" in obj
        if has_value == has_nested:
            which = "both value[x] and extension" if has_value else "neither value[x] nor extension"
            self.error(f"An extension must have either value[x] or extensions, not {which}", path)

    def unknown(self, key: str, model: _Model, path: str) -> None:
        for base, types in model.choice_types.items():
            if key.startswith(base) and key[len(base) : len(base) + 1].isupper():
                self.error(
                    f"{key} is not an allowed type for {base}[x] (allowed: {', '.join(types)})",
                    f"{path}.{key}",
                )
                return
        if key.startswith("_"):
            self.error(
                f"Unknown element {key}: there is no primitive element {key[1:]}", f"{path}.{key}"
            )
            return
        self.error(f"Unknown element {key}", f"{path}.{key}")

    def primitive(self, value: Any, field: _Field, where: str) -> None:
        if value is None:
            self.error("null is not allowed here", where)
            return
        check = field.check
        assert check is not None
        message = check(value)
        if message is not None:
            self.error(f"{field.type_code} value {message}", where)
        elif field.hook == _HOOK_CODE and field.codes is not None and value not in field.codes:
            self.error(f"Code is not in the required value set {field.value_set}", where)

    def primitive_list(
        self, obj: dict[str, Any], key: str, values: list[Any], field: _Field, path: str
    ) -> None:
        """json.html#primitive: ``null`` holds a place only where ``_key`` has content."""
        extensions = obj.get("_" + key)
        for index, item in enumerate(values):
            where = f"{path}.{key}[{index}]"
            if item is None:
                if (
                    type(extensions) is not list
                    or index >= len(extensions)
                    or extensions[index] is None
                ):
                    self.error(
                        "null is only allowed where the _element array has an id or extension",
                        where,
                    )
                continue
            self.primitive(item, field, where)

    def primitive_extension(
        self, obj: dict[str, Any], value: Any, field: _Field, path: str
    ) -> None:
        """The ``_element`` sibling with a primitive's id and extensions (json.html#primitive)."""
        element = self.schema.element
        where = f"{path}.{field.name}"
        if not field.many:
            if type(value) is not dict or not value:
                self.error(f"_{field.name} must be a non-empty JSON object", where)
            else:
                self.object(value, element, where)
            return
        if type(value) is not list or not value:
            self.error(f"_{field.name} must be a non-empty JSON array", where)
            return
        values = obj.get(field.name)
        if values is not None and (type(values) is not list or len(values) != len(value)):
            self.error(f"_{field.name} must have as many items as {field.name}", where)
        for index, item in enumerate(value):
            if item is None:
                continue
            if type(item) is not dict or not item:
                self.error("Must be a non-empty JSON object or null", f"{where}[{index}]")
            else:
                self.object(item, element, f"{where}[{index}]")

    def complex(self, value: Any, field: _Field, where: str) -> None:
        if field.kind == _RESOURCE:
            self.resource(value, where, contained=field.name == "contained")
            return
        if type(value) is not dict:
            self.error(f"{field.type_code} must be a JSON object", where)
            return
        if not value:
            self.error("Objects must not be empty", where)
            return
        model = field.model
        assert model is not None
        self.object(value, model, where)
        hook = field.hook
        if hook == _HOOK_NONE:
            return
        if hook == _HOOK_REFERENCE:
            self.reference(value, field, where)
        elif hook == _HOOK_CODING:
            self.coding(value, field, f"{where}.code")
        else:
            codings = value.get("coding")
            if type(codings) is list:
                for index, coding in enumerate(codings):
                    if type(coding) is dict:
                        self.coding(coding, field, f"{where}.coding[{index}].code")

    def coding(self, coding: dict[str, Any], field: _Field, where: str) -> None:
        """terminologies.html#required: only codings of the bound systems are judged."""
        bound = field.coding_codes
        assert bound is not None
        system, code = coding.get("system"), coding.get("code")
        if type(system) is str and type(code) is str:
            allowed = bound.get(system)
            if allowed is not None and code not in allowed:
                self.error(f"Code is not in the required value set {field.value_set}", where)

    def reference(self, value: dict[str, Any], field: _Field, where: str) -> None:
        """references.html#Reference: relative ``Type/id``, absolute URL, ``#id`` or URN."""
        ref = value.get("reference")
        if type(ref) is not str or not ref:
            return  # type errors are reported by the primitive check
        where = f"{where}.reference"
        if ref[0] == "#":
            if self.scopes:
                self.scopes[-1][0].append((ref[1:], where))
            return
        if ref.startswith("urn:"):
            if ref.startswith("urn:uuid:"):
                if _UUID(ref) is None:
                    self.error("Reference is not a valid urn:uuid", where)
            elif ref.startswith("urn:oid:") and _OID(ref) is None:
                self.error("Reference is not a valid urn:oid", where)
            return
        match = _RELATIVE(ref) or _CONDITIONAL(ref)
        if match is None:
            if _ABSOLUTE(ref) is None:
                self.error("Reference must be Type/id, an absolute URL, #id or a URN", where)
                return
            match = _ABSOLUTE_TAIL.fullmatch(ref)
            if match is None:
                return  # an absolute URL that is not a RESTful FHIR URL: nothing to check
            if match.group(1) not in self.schema.resource_types:
                return
        target = match.group(1)
        if target not in self.schema.resource_types:
            self.error("Reference names an unknown resource type", where)
        elif field.targets is not None and target not in field.targets:
            allowed = ", ".join(sorted(field.targets))
            self.error(f"Reference to {target} is not allowed here (allowed: {allowed})", where)


def validate_resource(resource: Any) -> list[Issue]:
    """Every structural problem of ``resource`` (parsed by :func:`carechart.jsonio.loads`).

    An empty list means the resource is valid by the rules in this module's docstring.
    """
    run = _Run(_schema())
    run.resource(resource, None, contained=False)
    return run.issues
