"""Small, safe templates for playbook text: ``{entity.id}`` placeholders, nothing else.

A template is compiled when the playbook is loaded, so an unknown variable or
a stray brace is a load error (``check-config``), never a surprise when an
action fires. There are no expressions, attribute walks or format specs: a
placeholder names one variable from :data:`VARIABLES`, and ``{{``/``}}`` are
literal braces. Values come from a :class:`TemplateContext` the engine builds
per action; for destinations outside the security team (chat, webhooks,
PagerDuty) that context already holds pseudonyms and a masked summary.

Three ways to render, by where the text goes:

* :meth:`Template.render` - plain text (JSON bodies are encoded afterwards, so
  quoting is the JSON encoder's job);
* :meth:`Template.render_url` - every value percent-encoded, so an entity id
  like ``a&b=c`` cannot add query parameters to a link-out URL;
* :meth:`Template.render_value` - a template that is exactly one placeholder
  keeps the value's JSON type (a number stays a number, ``atlas`` a list).

>>> t = Template.compile("{kind} on {entity.type} {entity.id} ({{literal}})")
>>> t.render({"kind": "drift", "entity.type": "model", "entity.id": "m1"})
'drift on model m1 ({literal})'
>>> Template.compile("https://x/?q={entity.id}").render_url({"entity.id": "a&b=c"})
'https://x/?q=a%26b%3Dc'
>>> Template.compile("{entity.name}")
Traceback (most recent call last):
...
ValueError: unknown template variable {entity.name}; known: ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, TypeAlias
from urllib.parse import quote

from pydantic import PlainSerializer, PlainValidator

__all__ = [
    "VARIABLES",
    "Template",
    "TemplateContext",
    "TemplateField",
    "compile_tree",
    "render_tree",
]

#: Every variable a template may use, and what it holds.
VARIABLES: Final[Mapping[str, str]] = {
    "finding_id": "the finding's stable id",
    "ts": "event time of the triggering event (RFC 3339)",
    "detector": "detector name, e.g. extraction.prada",
    "kind": "finding kind, e.g. model_extraction",
    "severity": "info, low, medium, high or critical",
    "summary": "the finding's one-sentence summary (principals/IPs pseudonymised outside)",
    "entity.type": "model, principal, resource or ip",
    "entity.id": "the entity id (a pseudonym for principals/IPs outside, when enabled)",
    "model_id": "the model concerned, or empty",
    "atlas": "ATLAS technique ids (a list; joined with ', ' inside text)",
    "mitigations": "the route's ATLAS mitigation ids (a list)",
    "route": "the route's name",
    "action": "the action's name",
    "phase": "alert, repeat, escalated, acknowledged, resolved or revert",
    "incident.count": "findings in this incident so far",
    "incident.first_seen": "when the incident opened (RFC 3339)",
    "evidence": "statistics only: a name -> number mapping (never raw values)",
}

TemplateContext: TypeAlias = Mapping[str, Any]

_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Template:
    """A compiled template: literal chunks and variable names, alternating."""

    __slots__ = ("parts", "source")

    def __init__(self, source: str, parts: tuple[str | tuple[str], ...]) -> None:
        self.source = source
        self.parts = parts  # str: literal; 1-tuple: variable name

    @classmethod
    def compile(cls, source: str) -> Template:
        """Parse ``source``; ValueError names the first unknown variable or stray brace."""
        parts: list[str | tuple[str]] = []
        literal: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(source):
            literal.append(source[pos : match.start()])
            pos = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
                continue
            name = match.group(1)
            if name is None:
                raise ValueError(f"stray {token!r} at position {match.start()} "
                                 "(write {{ or }} for a literal brace)")
            name = name.strip()
            if name not in VARIABLES:
                raise ValueError(f"unknown template variable {{{name}}}; known: "
                                 + ", ".join(VARIABLES))
            if "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append((name,))
        literal.append(source[pos:])
        if "".join(literal):
            parts.append("".join(literal))
        return cls(source, tuple(parts))

    def render(self, context: TemplateContext) -> str:
        return "".join(p if isinstance(p, str) else _text(context.get(p[0])) for p in self.parts)

    def render_url(self, context: TemplateContext) -> str:
        return "".join(
            p if isinstance(p, str) else quote(_text(context.get(p[0])), safe="")
            for p in self.parts
        )

    def render_value(self, context: TemplateContext) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], tuple):
            return context.get(self.parts[0][0])
        return self.render(context)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def _coerce(value: Any) -> Template:
    if isinstance(value, Template):
        return value
    if not isinstance(value, str):
        raise ValueError("a template must be a string")
    return Template.compile(value)


#: A pydantic field type: a string compiled (and so checked) at validation.
TemplateField = Annotated[
    Template,
    PlainValidator(_coerce),
    PlainSerializer(lambda t: t.source, return_type=str),
]


def render_tree(tree: Any, context: TemplateContext) -> Any:
    """A JSON-like tree with every template leaf rendered (single placeholders keep type)."""
    if isinstance(tree, Template):
        return tree.render_value(context)
    if isinstance(tree, Mapping):
        return {str(k): render_tree(v, context) for k, v in tree.items()}
    if isinstance(tree, list):
        return [render_tree(v, context) for v in tree]
    return tree


def compile_tree(tree: Any) -> Any:
    """Every string leaf of a JSON-like tree compiled; ValueError names the path."""

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, str):
            try:
                return Template.compile(node)
            except ValueError as exc:
                raise ValueError(f"{path or 'body'}: {exc}") from None
        if isinstance(node, Mapping):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if node is None or isinstance(node, bool | int | float):
            return node
        raise ValueError(f"{path or 'body'}: unsupported value {type(node).__name__}")

    return walk(tree, "")
