"""Command-line options generated from a config class, so that a flag's help is the field's own description.

One field, one flag: ``max_new_tokens`` becomes ``--max-new-tokens``, with the field's type (``Literal``
values become choices, lists take several values, ``bool`` is a switch), its default shown, and its
description as the help. The description lives once, on the field: ``Field(description=...)`` on a
pydantic model, ``field(metadata={"description": ...})`` on a dataclass.

Every generated option defaults to ``None`` on the command line, so an option not given leaves the
config class's default (or the config file's value) in force; ``config_from_args`` builds the config
from what was given.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

_MISSING: Any = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """What the command line needs of one config field."""

    name: str
    type: Any
    default: Any  # dataclasses.MISSING: required
    description: str

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def field_docs(cls: type) -> dict[str, FieldDoc]:
    """The fields of a pydantic model or a dataclass, in definition order."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not _MISSING:
                default = f.default
            elif callable(f.default_factory):
                default = f.default_factory()
            else:
                default = _MISSING
            out[f.name] = FieldDoc(f.name, hints[f.name], default, f.metadata.get("description", ""))
        return out
    model_fields = getattr(cls, "model_fields", None)
    if model_fields is None:
        raise TypeError(f"{cls!r} is neither a dataclass nor a pydantic model")
    out = {}
    for name, info in model_fields.items():
        default = _MISSING if info.is_required() else info.get_default(call_default_factory=True)
        out[name] = FieldDoc(name, info.annotation, default, info.description or "")
    return out


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def option_help(doc: FieldDoc, default_text: str | None = None) -> str:
    """The field's description and its default (``default_text`` replaces the shown default)."""
    if not doc.description:
        raise ValueError(f"field {doc.name!r} has no description: add one where the field is defined")
    text = doc.description
    if default_text is not None:
        text += f" (default: {default_text})"
    elif not doc.required and doc.default is not None and doc.default != []:
        text += f" (default: {_shown(doc.default)})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_option(
    parser: argparse.ArgumentParser,
    doc: FieldDoc,
    flag: str | None = None,
    default_text: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """One option for one field; ``kwargs`` go to ``add_argument`` (e.g. ``metavar``)."""
    t = _strip_optional(doc.type)
    origin = typing.get_origin(t)
    kw: dict[str, Any] = {"dest": doc.name, "default": None, "help": option_help(doc, default_text)}
    if doc.required:
        kw["required"] = True
    if t is bool:
        kw["action"] = argparse.BooleanOptionalAction if doc.default is True else "store_true"
    elif origin is Literal:
        values = typing.get_args(t)
        kw.update(choices=values, type=type(values[0]))
    elif origin in (list, tuple) or t in (list, tuple):
        elem = next((a for a in typing.get_args(t) if a is not Ellipsis), str)
        elem = _strip_optional(elem)
        kw.update(nargs="+", type=elem if elem in (int, float) else str)
    else:
        kw["type"] = t if t in (int, float, str) else str
    kw.update(kwargs)
    return parser.add_argument(flag or flag_name(doc.name), **kw)


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = ("extra",),
    flags: Mapping[str, str] | None = None,
    default_texts: Mapping[str, str] | None = None,
) -> None:
    """An option per field of ``cls`` (``only``: these fields, in this order; ``flags``: flag names
    that differ from the field's; ``default_texts``: what to show as a field's default)."""
    docs = field_docs(cls)
    names = list(only) if only is not None else [n for n in docs if n not in set(exclude)]
    for name in names:
        add_option(parser, docs[name], (flags or {}).get(name), (default_texts or {}).get(name))


def config_from_args(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """``cls`` built from the options that were given (``None``: not given, the class default holds)."""
    docs = field_docs(cls)
    values = {n: getattr(ns, n) for n in docs if getattr(ns, n, None) is not None}
    for n, v in values.items():
        if typing.get_origin(_strip_optional(docs[n].type)) is tuple and isinstance(v, list):
            values[n] = tuple(v)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def walk_parsers(
    parser: argparse.ArgumentParser, prog: tuple[str, ...] = ()
) -> Iterable[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's parser with its path of subcommand names (for tests and docs)."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, (*prog, name))


CONFIG_HELP = "the service's YAML config file (default: the embedded one: two reward models on MiniLM, CPU)"


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in ``rewardserve --help``, ``description`` (default: the summary) first in
    its own ``--help``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description or summary[:1].upper() + summary[1:] + "."
    )
    return parser
