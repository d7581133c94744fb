"""The FHIRPath subset that R4 search parameters use, compiled once to Python closures.

FHIRPath: http://hl7.org/fhirpath/N1/ (the R4 search page, http://hl7.org/fhir/R4/search.html
§"Search Parameter expressions", says expressions are FHIRPath). Supported: paths with
choice types (``Observation.value`` finds ``valueQuantity`` and knows it is a Quantity), the
union ``|``, the type operators ``is``/``as`` and the functions ``as()``, ``is()``,
``ofType()``, ``where()``, ``exists()``, ``empty()``, ``not()``, ``first()``, ``resolve()``,
``extension(url)``; the indexer ``[n]``; ``=``/``!=``, ``and``/``or``, string/boolean/number literals and
``%resource``. Anything else fails to compile with :class:`FhirPathError`, so an unsupported
expression is found when the definitions load, not at search time.

A node is ``(value, type)``: the JSON value and its FHIR type when the path knows it (from a
choice suffix, a resource's ``resourceType``, a literal or ``resolve()``), else ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["CompiledPath", "FhirPathError", "Node", "compile_path"]

Node = tuple[Any, str | None]
#: A compiled expression: (input collection, root resource) -> output collection.
Evaluator = Callable[[list[Node], Any], list[Node]]

PRIMITIVES = frozenset(
    {
        "boolean", "integer", "string", "decimal", "uri", "url", "canonical", "base64Binary",
        "instant", "date", "dateTime", "time", "code", "oid", "id", "markdown", "unsignedInt",
        "positiveInt", "uuid",
    }
)  # fmt: skip
_PRIMITIVE_BY_SUFFIX = {p[0].upper() + p[1:]: p for p in PRIMITIVES}
#: The types a choice element may take (http://hl7.org/fhir/R4/datatypes.html#open): a key
#: is ``name`` + one of these, or it is another element (``performerType`` is not a
#: ``performer[x]``).
_CHOICE_SUFFIXES = frozenset(_PRIMITIVE_BY_SUFFIX) | {
    "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactPoint",
    "Count", "Distance", "Duration", "HumanName", "Identifier", "Money", "Period", "Quantity",
    "Range", "Ratio", "Reference", "SampledData", "Signature", "Timing", "ContactDetail",
    "Contributor", "DataRequirement", "Expression", "ParameterDefinition", "RelatedArtifact",
    "TriggerDefinition", "UsageContext", "Dosage", "Meta",
}  # fmt: skip
#: Specialisations that ``is``/``as`` treat as their base type.
_SUBTYPES = {
    "quantity": {"quantity", "age", "duration", "distance", "count", "simplequantity", "moneyquantity"},
    "string": {"string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid"},
    "uri": {"uri", "url", "canonical", "oid", "uuid"},
    "integer": {"integer", "unsignedint", "positiveint"},
}  # fmt: skip


class FhirPathError(ValueError):
    """The expression is outside the supported subset or is malformed."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>!=|[.()|=,%\[\]])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<quoted>`[^`]*`))"
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FhirPathError(f"unexpected character at {pos} in {text!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "quoted":
            kind, value = "name", value[1:-1]
        elif kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append(_Tok(kind, value))
        pos = m.end()
    tokens.append(_Tok("end", ""))
    return tokens


def _type_matches(node_type: str | None, wanted: str) -> bool:
    if node_type is None:
        return False
    have, want = node_type.lower(), wanted.removeprefix("FHIR.").lower()
    return have == want or have in _SUBTYPES.get(want, ())


def _children(value: Any, name: str) -> Iterable[Node]:
    if not isinstance(value, dict):
        return ()
    if name in value:
        child = value[name]
        items = child if isinstance(child, list) else [child]
        return [(item, _resource_type(item)) for item in items]
    # A choice element (value[x]) appears as valueQuantity, valueString, ...
    for key, child in value.items():
        if key.startswith(name) and key[len(name) :] in _CHOICE_SUFFIXES:
            suffix = key[len(name) :]
            node_type = _PRIMITIVE_BY_SUFFIX.get(suffix, suffix)
            items = child if isinstance(child, list) else [child]
            return [(item, node_type) for item in items]
    return ()


def _resource_type(value: Any) -> str | None:
    if isinstance(value, dict):
        rtype = value.get("resourceType")
        return rtype if isinstance(rtype, str) else None
    return None


def _truth(nodes: list[Node]) -> bool | None:
    """Singleton evaluation of a collection as a boolean (FHIRPath §4.5)."""
    if not nodes:
        return None
    if len(nodes) == 1 and isinstance(nodes[0][0], bool):
        return nodes[0][0]
    return True


def _bool(value: bool | None) -> list[Node]:
    return [] if value is None else [(value, "boolean")]


def _resolve(node: Node, root: Any) -> Node | None:
    """``resolve()`` without fetching: the target's type from the reference text (or the
    contained resource for ``#id``), which is all ``where(resolve() is X)`` needs."""
    value = node[0]
    ref = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("#"):
        for contained in root.get("contained", ()) if isinstance(root, dict) else ():
            if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                return contained, _resource_type(contained)
        return None
    parts = ref.split("|", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return {}, parts[-2]
    return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def take(self, text: str | None = None) -> _Tok:
        tok = self.tokens[self.pos]
        if text is not None and tok.text != text:
            raise FhirPathError(f"expected {text!r}, found {tok.text!r} in {self.text!r}")
        self.pos += 1
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok.text == text and tok.kind in ("op", "name")

    def parse(self) -> Evaluator:
        ev = self.or_expr()
        if self.peek().kind != "end":
            raise FhirPathError(f"unexpected {self.peek().text!r} in {self.text!r}")
        return ev

    def or_expr(self) -> Evaluator:
        left = self.and_expr()
        while self.at("or"):
            self.take()
            left = _logic(left, self.and_expr(), conj=False)
        return left

    def and_expr(self) -> Evaluator:
        left = self.equality()
        while self.at("and"):
            self.take()
            left = _logic(left, self.equality(), conj=True)
        return left

    def equality(self) -> Evaluator:
        left = self.union()
        while self.peek().text in ("=", "!=") and self.peek().kind == "op":
            negate = self.take().text == "!="
            left = _equals(left, self.union(), negate)
        return left

    def union(self) -> Evaluator:
        branches = [self.type_expr()]
        while self.at("|"):
            self.take()
            branches.append(self.type_expr())
        return branches[0] if len(branches) == 1 else _union(branches)

    def type_expr(self) -> Evaluator:
        left = self.term()
        while self.peek().kind == "name" and self.peek().text in ("is", "as"):
            op = self.take().text
            type_name = self.type_specifier()
            left = _type_op(left, type_name, op)
        return left

    def type_specifier(self) -> str:
        name = self.take().text
        while self.at("."):
            self.take()
            name += "." + self.take().text
        return name

    def term(self) -> Evaluator:
        tok = self.peek()
        steps: list[Evaluator] = []
        if tok.text == "(" and tok.kind == "op":
            self.take()
            steps.append(self.or_expr())
            self.take(")")
        elif tok.kind == "str":
            self.take()
            steps.append(_const([(tok.text, "string")]))
        elif tok.kind == "num":
            self.take()
            steps.append(_const([(Decimal(tok.text), "decimal")]))
        elif tok.text in ("true", "false") and tok.kind == "name":
            self.take()
            steps.append(_const([(tok.text == "true", "boolean")]))
        elif tok.text == "%" and tok.kind == "op":
            self.take()
            name = self.take().text
            if name not in ("resource", "rootResource"):
                raise FhirPathError(f"unsupported environment variable %{name}")
            steps.append(lambda _nodes, root: [(root, _resource_type(root))])
        elif tok.kind == "name":
            steps.append(self.invocation(first=True))
        else:
            raise FhirPathError(f"unexpected {tok.text!r} in {self.text!r}")
        while self.at(".") or self.at("["):
            if self.take().text == "[":
                tok = self.take()
                if tok.kind != "num" or not tok.text.isdigit():
                    raise FhirPathError(f"an indexer takes an integer in {self.text!r}")
                index = int(tok.text)
                self.take("]")
                steps.append(_indexer(index))
            else:
                steps.append(self.invocation(first=False))
        return steps[0] if len(steps) == 1 else _chain(steps)

    def invocation(self, *, first: bool) -> Evaluator:
        name = self.take().text
        if self.at("("):
            self.take()
            args: list[Any] = []
            if name in ("as", "is", "ofType"):
                args.append(self.type_specifier())
            else:
                while not self.at(")"):
                    args.append(self.or_expr())
                    if self.at(","):
                        self.take()
            self.take(")")
            return _function(name, args, self.text)
        if first and name[:1].isupper():
            return _type_filter(name)
        return _member(name)


def _const(nodes: list[Node]) -> Evaluator:
    return lambda _nodes, _root: nodes


def _chain(steps: list[Evaluator]) -> Evaluator:
    def run(nodes: list[Node], root: Any) -> list[Node]:
        for step in steps:
            nodes = step(nodes, root)
        return nodes

    return run


def _indexer(index: int) -> Evaluator:
    return lambda nodes, _root: nodes[index : index + 1]


def _union(branches: list[Evaluator]) -> Evaluator:
    def run(nodes: list[Node], root: Any) -> list[Node]:
        out: list[Node] = []
        for branch in branches:
            out.extend(branch(nodes, root))
        return out

    return run


def _member(name: str) -> Evaluator:
    def run(nodes: list[Node], _root: Any) -> list[Node]:
        out: list[Node] = []
        for value, _type in nodes:
            out.extend(_children(value, name))
        return out

    return run


def _type_filter(name: str) -> Evaluator:
    """A leading type name (``Patient.name``) selects the focus when it is of that type."""

    def run(nodes: list[Node], _root: Any) -> list[Node]:
        return [
            n
            for n in nodes
            if (name in ("Resource", "DomainResource") and n[1] is not None) or n[1] == name
        ]

    return run


def _type_op(left: Evaluator, type_name: str, op: str) -> Evaluator:
    if op == "as":
        return lambda nodes, root: [n for n in left(nodes, root) if _type_matches(n[1], type_name)]

    def is_(nodes: list[Node], root: Any) -> list[Node]:
        result = left(nodes, root)
        return _bool(_type_matches(result[0][1], type_name)) if len(result) == 1 else []

    return is_


def _equals(left: Evaluator, right: Evaluator, negate: bool) -> Evaluator:
    def run(nodes: list[Node], root: Any) -> list[Node]:
        a, b = left(nodes, root), right(nodes, root)
        if not a or not b:
            return []
        same = len(a) == len(b) and all(x[0] == y[0] for x, y in zip(a, b, strict=True))
        return _bool(same != negate)

    return run


def _logic(left: Evaluator, right: Evaluator, *, conj: bool) -> Evaluator:
    def run(nodes: list[Node], root: Any) -> list[Node]:
        a, b = _truth(left(nodes, root)), _truth(right(nodes, root))
        if conj:
            if a is False or b is False:
                return _bool(False)
            return _bool(True) if a and b else []
        if a or b:
            return _bool(True)
        return _bool(False) if a is False and b is False else []

    return run


def _function(name: str, args: list[Any], text: str) -> Evaluator:
    def arity(n: int) -> None:
        if len(args) != n:
            raise FhirPathError(f"{name}() takes {n} argument(s) in {text!r}")

    if name in ("as", "ofType"):
        arity(1)
        wanted: str = args[0]
        return lambda nodes, _root: [n for n in nodes if _type_matches(n[1], wanted)]
    if name == "is":
        arity(1)
        is_type: str = args[0]
        return lambda nodes, _root: (
            _bool(_type_matches(nodes[0][1], is_type)) if len(nodes) == 1 else []
        )
    if name == "where":
        arity(1)
        crit: Evaluator = args[0]
        return lambda nodes, root: [n for n in nodes if _truth(crit([n], root)) is True]
    if name == "exists":
        if len(args) > 1:
            arity(1)
        test: Evaluator | None = args[0] if args else None
        return lambda nodes, root: _bool(
            any(_truth(test([n], root)) is True for n in nodes) if test else bool(nodes)
        )
    if name == "empty":
        arity(0)
        return lambda nodes, _root: _bool(not nodes)
    if name == "not":
        arity(0)

        def not_(nodes: list[Node], _root: Any) -> list[Node]:
            truth = _truth(nodes)
            return [] if truth is None else _bool(not truth)

        return not_
    if name == "first":
        arity(0)
        return lambda nodes, _root: nodes[:1]
    if name == "resolve":
        arity(0)

        def resolve(nodes: list[Node], root: Any) -> list[Node]:
            return [r for r in (_resolve(n, root) for n in nodes) if r is not None]

        return resolve
    if name == "extension":
        arity(1)
        url_expr: Evaluator = args[0]
        urls = {v for v, _t in url_expr([], None)}

        def extension(nodes: list[Node], _root: Any) -> list[Node]:
            return [
                (ext, "Extension")
                for value, _t in nodes
                for ext, _ in _children(value, "extension")
                if isinstance(ext, dict) and ext.get("url") in urls
            ]

        return extension
    raise FhirPathError(f"unsupported function {name}() in {text!r}")


@dataclass(frozen=True, slots=True)
class CompiledPath:
    """A compiled expression; call :meth:`evaluate` with a resource (or any focus)."""

    expression: str
    run: Evaluator

    def evaluate(self, focus: Any, root: Any = None) -> list[Node]:
        root = focus if root is None else root
        return self.run([(focus, _resource_type(focus))], root)

    def values(self, focus: Any) -> list[Any]:
        return [value for value, _type in self.evaluate(focus)]


def split_union(text: str) -> list[str]:
    """Top-level ``|`` branches (outside parentheses and strings)."""
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == "|":
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


_ROOT = re.compile(r"^\(*\s*([A-Z][A-Za-z]*)\b")


def compile_path(expression: str, resource_type: str | None = None) -> CompiledPath:
    """Compile ``expression``; with ``resource_type``, drop the union branches rooted at other
    types first (``Account.subject | Observation.subject`` for Observation keeps one path)."""
    text = expression
    if resource_type is not None:
        kept = []
        for branch in split_union(expression):
            m = _ROOT.match(branch)
            root = m.group(1) if m else None
            if root is None or root in (resource_type, "Resource", "DomainResource"):
                kept.append(branch)
        text = " | ".join(kept)
    if not text:
        return CompiledPath(expression, lambda _nodes, _root: [])
    return CompiledPath(expression, _Parser(text).parse())
