"""Derive Carechart's compact FHIR R4 definition tables from the pinned official package.

Run: ``.venv/bin/python tools/gen_fhir_definitions.py``

Reads the verified ``hl7.fhir.r4.examples@4.0.1`` package (see ``tools/fhir_package.py``) and
writes gzipped JSON tables to ``src/carechart/fhir/definitions/data/``:

- ``structure.json.gz``: every resource type and every complex/primitive datatype defined by
  the base specification (StructureDefinition kind resource/complex-type/primitive-type, not
  profiles, not logical models), with the snapshot elements reduced to what validation needs,
  plus the primitive regexes (http://hl7.org/fhir/R4/datatypes.html#primitive).
- ``valuesets.json.gz``: every ValueSet that is the target of a required binding, expanded from
  ``compose`` against the package's CodeSystems, or marked unexpandable
  (http://hl7.org/fhir/R4/valueset.html#compositions).
- ``search_parameters.json.gz``: all SearchParameters of the release, from the bundled
  ``Bundle-searchParams.json`` (http://hl7.org/fhir/R4/searchparameter.html).
- ``compartment_patient.json.gz``: CompartmentDefinition-patient as resource type -> params
  (http://hl7.org/fhir/R4/compartmentdefinition-patient.html).

The output is deterministic (sorted keys, fixed gzip mtime) so re-running it yields no diff.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.fhir_package import PACKAGE, SHA256, TARBALL, VERSION, ensure_package  # noqa: E402

OUT = ROOT / "src" / "carechart" / "fhir" / "definitions" / "data"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
FHIRPATH_TYPE_PREFIX = "http://hl7.org/fhirpath/System."
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"

Json = dict[str, Any]


def _load(path: Path) -> Json:
    with path.open(encoding="utf-8") as fh:
        data: Json = json.load(fh)
    return data


def _strip_version(url: str) -> str:
    """Several R4 bindings read ``...|4.0.1``; the table keys on the bare canonical."""
    return url.split("|", 1)[0]


def _type_code(type_: Json) -> str:
    """The FHIR type of an element type entry.

    R4 snapshots type ``Element.id``, ``Extension.url`` and the primitives' ``value`` with
    FHIRPath system types (``http://hl7.org/fhirpath/System.String``) and put the FHIR type in
    the structuredefinition-fhir-type extension; use that one.
    """
    code: str = type_["code"]
    if code.startswith(FHIRPATH_TYPE_PREFIX):
        for ext in type_.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return code[len(FHIRPATH_TYPE_PREFIX) :].lower()
    return code


def _element(structure: Json, element: Json) -> Json:
    path: str = element["path"]
    row: Json = {"path": path, "min": element.get("min", 0), "max": element.get("max", "*")}
    types = []
    for type_ in element.get("type", []):
        code = _type_code(type_)
        # Resource.id is typed System.String(string) in the R4 snapshots, but the
        # resource id is the `id` datatype (http://hl7.org/fhir/R4/resource.html#id).
        if structure["kind"] == "resource" and path.count(".") == 1 and path.endswith(".id"):
            code = "id"
        entry: Json = {"code": code}
        if type_.get("targetProfile"):
            entry["targetProfile"] = list(type_["targetProfile"])
        types.append(entry)
    if types:
        row["types"] = types
    if "contentReference" in element:
        row["contentReference"] = element["contentReference"]
    if element.get("isSummary"):
        # search.html#summary: _summary=true keeps the elements marked isSummary.
        row["summary"] = True
    binding = element.get("binding")
    if binding and "strength" in binding:
        row["binding"] = {"strength": binding["strength"]}
        if "valueSet" in binding:
            row["binding"]["valueSet"] = _strip_version(binding["valueSet"])
    return row


def build_structure(files: list[Path]) -> Json:
    types: Json = {}
    regexes: dict[str, str] = {}
    for path in files:
        sd = _load(path)
        if sd.get("kind") not in ("resource", "complex-type", "primitive-type"):
            continue
        # Base definitions only: specializations plus the roots (Resource, Element) that
        # carry no derivation. Profiles (constraint) such as SimpleQuantity are excluded.
        if sd.get("derivation", "specialization") != "specialization":
            continue
        if sd["url"] != SD_PREFIX + sd["type"]:
            continue
        name = sd["type"]
        elements = [_element(sd, e) for e in sd["snapshot"]["element"]]
        base = sd.get("baseDefinition", "")
        types[name] = {
            "kind": sd["kind"],
            "abstract": bool(sd.get("abstract", False)),
            "base": base[len(SD_PREFIX) :] if base.startswith(SD_PREFIX) else None,
            "elements": elements,
        }
        if sd["kind"] == "primitive-type":
            for element in sd["snapshot"]["element"]:
                if element["path"] != f"{name}.value":
                    continue
                for type_ in element.get("type", []):
                    for ext in type_.get("extension", []):
                        if ext.get("url") == REGEX_EXT:
                            regexes[name] = ext["valueString"]
    return {"types": types, "primitive_regex": regexes}


class Unexpandable(Exception):
    """The value set's content cannot be computed from the package alone."""


class CodeSystemIndex:
    """Concepts and their hierarchy for every complete CodeSystem in the package."""

    def __init__(self, files: list[Path]) -> None:
        self.systems: dict[str, Json] = {}
        for path in files:
            cs = _load(path)
            self.systems[cs["url"]] = cs
        self._concepts: dict[str, dict[str, Json]] = {}
        self._children: dict[str, dict[str, set[str]]] = {}

    def _index(self, url: str) -> None:
        if url in self._concepts:
            return
        cs = self.systems.get(url)
        if cs is None:
            raise Unexpandable(f"code system {url} is not in the package")
        if cs.get("content") != "complete":
            raise Unexpandable(f"code system {url} has content {cs.get('content')!r}")
        concepts: dict[str, Json] = {}
        children: dict[str, set[str]] = {}

        def walk(items: list[Json], parent: str | None) -> None:
            for concept in items:
                code = concept["code"]
                concepts[code] = concept
                if parent is not None:
                    children.setdefault(parent, set()).add(code)
                walk(concept.get("concept", []), code)

        walk(cs.get("concept", []), None)
        # Some terminologies state the hierarchy as a `subsumedBy`/`parent` property
        # instead of nesting (http://hl7.org/fhir/R4/codesystem.html#hierarchy).
        for code, concept in concepts.items():
            for prop in concept.get("property", []):
                if prop.get("code") in ("subsumedBy", "parent") and "valueCode" in prop:
                    children.setdefault(prop["valueCode"], set()).add(code)
        self._concepts[url] = concepts
        self._children[url] = children

    def all_codes(self, url: str) -> set[str]:
        self._index(url)
        return set(self._concepts[url])

    def descendants(self, url: str, code: str) -> set[str]:
        self._index(url)
        found: set[str] = set()
        stack = [code]
        while stack:
            for child in self._children[url].get(stack.pop(), ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found

    def property_equals(self, url: str, prop: str, value: str) -> set[str]:
        self._index(url)
        matches = set()
        for code, concept in self._concepts[url].items():
            for p in concept.get("property", []):
                if p.get("code") != prop:
                    continue
                values = {str(v) for k, v in p.items() if k.startswith("value")}
                if value in values or (
                    value in ("true", "false") and str(value == "true") in values
                ):
                    matches.add(code)
        return matches


def _expand_include(
    include: Json, systems: CodeSystemIndex, valuesets: dict[str, Json], depth: int
) -> set[tuple[str, str]]:
    """One compose.include/exclude entry (http://hl7.org/fhir/R4/valueset.html#compositions)."""
    result: set[tuple[str, str]] | None = None
    system = include.get("system")
    if system is not None:
        if include.get("concept"):
            codes = {c["code"] for c in include["concept"]}
        elif include.get("filter"):
            codes = systems.all_codes(system)
            for flt in include["filter"]:
                codes &= _apply_filter(system, flt, systems)
        else:
            codes = systems.all_codes(system)
        result = {(system, code) for code in codes}
    for vs_url in include.get("valueSet", []):
        nested = _expand(_strip_version(vs_url), systems, valuesets, depth + 1)
        result = nested if result is None else result & nested
    if result is None:
        raise Unexpandable("include with neither system nor valueSet")
    return result


def _apply_filter(system: str, flt: Json, systems: CodeSystemIndex) -> set[str]:
    op, prop, value = flt.get("op"), flt.get("property"), str(flt.get("value", ""))
    if op in ("is-a", "descendent-of", "is-not-a") and prop in ("concept", "code", "parent"):
        below = systems.descendants(system, value)
        if op == "is-a":
            return below | {value}
        if op == "descendent-of":
            return below
        return systems.all_codes(system) - below - {value}
    if op == "in" and prop in ("concept", "code"):
        return {v.strip() for v in value.split(",")}
    if op == "=":
        return systems.property_equals(system, str(prop), value)
    raise Unexpandable(f"filter {prop} {op} {value} on {system}")


def _expand(
    url: str, systems: CodeSystemIndex, valuesets: dict[str, Json], depth: int = 0
) -> set[tuple[str, str]]:
    if depth > 20:
        raise Unexpandable(f"value set {url} includes itself")
    vs = valuesets.get(url)
    if vs is None:
        raise Unexpandable(f"value set {url} is not in the package")
    compose = vs.get("compose")
    if not compose:
        raise Unexpandable(f"value set {url} has no compose")
    codes: set[tuple[str, str]] = set()
    for include in compose.get("include", []):
        codes |= _expand_include(include, systems, valuesets, depth)
    for exclude in compose.get("exclude", []):
        codes -= _expand_include(exclude, systems, valuesets, depth)
    return codes


def build_valuesets(structure: Json, vs_files: list[Path], cs_files: list[Path]) -> Json:
    required: set[str] = set()
    for type_def in structure["types"].values():
        for element in type_def["elements"]:
            binding = element.get("binding")
            if binding and binding["strength"] == "required" and "valueSet" in binding:
                required.add(binding["valueSet"])
    valuesets = {vs["url"]: vs for vs in (_load(p) for p in vs_files)}
    systems = CodeSystemIndex(cs_files)
    table: Json = {}
    for url in sorted(required):
        try:
            codes = _expand(url, systems, valuesets)
        except Unexpandable as exc:
            table[url] = {"status": "unexpandable", "reason": str(exc)}
            continue
        by_system: dict[str, list[str]] = {}
        for system, code in sorted(codes):
            by_system.setdefault(system, []).append(code)
        table[url] = {"status": "expanded", "codes": by_system}
    return table


SEARCH_FIELDS = (
    "url",
    "id",
    "name",
    "code",
    "base",
    "type",
    "expression",
    "xpathUsage",
    "target",
    "multipleOr",
    "multipleAnd",
    "comparator",
    "modifier",
    "chain",
    "derivedFrom",
    "description",
)


def build_search_parameters(bundle_path: Path) -> list[Json]:
    """All SearchParameters of the release, minus the XPath (we evaluate FHIRPath only)."""
    rows = []
    for entry in _load(bundle_path)["entry"]:
        sp = entry["resource"]
        row = {field: sp[field] for field in SEARCH_FIELDS if field in sp}
        if "component" in sp:
            row["component"] = [
                {"definition": c["definition"], "expression": c["expression"]}
                for c in sp["component"]
            ]
        rows.append(row)
    rows.sort(key=lambda r: r["url"])
    return rows


def build_compartment(path: Path) -> dict[str, list[str]]:
    compartment = _load(path)
    return {
        entry["code"]: list(entry["param"])
        for entry in compartment["resource"]
        if entry.get("param")
    }


def _write(name: str, data: Any) -> int:
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    blob = gzip.compress(raw.encode("utf-8"), compresslevel=9, mtime=0)
    (OUT / name).write_bytes(blob)
    return len(blob)


SOURCE_MD = """# Source of these tables

Derived, not hand-written. Regenerate with:

    .venv/bin/python tools/gen_fhir_definitions.py

- Package: `{package}` version `{version}` (FHIR R4 4.0.1), from the npm registry
- Tarball: `{tarball}`, sha256 `{sha256}` (verified by `tools/fhir_package.py`)
- Licence: CC0-1.0 (HL7 FHIR specification content)

| file | content |
|---|---|
{rows}
"""


def main() -> None:
    package = ensure_package()
    OUT.mkdir(parents=True, exist_ok=True)
    sd_files = sorted(package.glob("StructureDefinition-*.json"))
    structure = build_structure(sd_files)
    valuesets = build_valuesets(
        structure,
        sorted(package.glob("ValueSet-*.json")),
        sorted(package.glob("CodeSystem-*.json")),
    )
    search = build_search_parameters(package / "Bundle-searchParams.json")
    compartment = build_compartment(package / "CompartmentDefinition-patient.json")
    expanded = sum(1 for v in valuesets.values() if v["status"] == "expanded")
    outputs = [
        ("structure.json.gz", structure, f"{len(structure['types'])} types"),
        (
            "valuesets.json.gz",
            valuesets,
            f"{len(valuesets)} required-binding value sets ({expanded} expanded)",
        ),
        ("search_parameters.json.gz", search, f"{len(search)} search parameters"),
        ("compartment_patient.json.gz", compartment, f"{len(compartment)} resource types"),
    ]
    rows = []
    for name, data, summary in outputs:
        size = _write(name, data)
        rows.append(f"| `{name}` | {summary}, {size:,} bytes |")
        print(f"{name}: {summary}, {size:,} bytes")
    (OUT / "SOURCE.md").write_text(
        SOURCE_MD.format(
            package=PACKAGE, version=VERSION, tarball=TARBALL, sha256=SHA256, rows="\n".join(rows)
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
