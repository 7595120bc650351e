"""Argparse options built from config dataclasses: each option is declared once, on its field.

A field becomes a command-line option when its metadata carries ``help`` (see :func:`option`).
Nested config dataclasses (``TrainConfig.model``) are flattened into the same parser. The
idea is that of transformers' ``HfArgumentParser``, in a few lines:

    add_options(parser, TrainConfig)
    config = from_args(TrainConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["option", "add_options", "from_args", "defaults_of"]

_MISSING = dataclasses.MISSING


def option(help: str, *, default: Any = _MISSING, **argparse_kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field that is also a command-line option (``flag``, ``nargs``, ``choices``…)."""
    metadata = {"help": help, **argparse_kwargs}
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple or default_factory for mutable defaults")
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element or scalar type, whether it is a sequence) of ``X``, ``X | None``, ``tuple[X, ...]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    if origin is tuple:
        return args[0], True
    return annotation, False


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _nested(field: dataclasses.Field, hints: Mapping[str, Any]) -> type | None:
    kind = hints[field.name]
    return kind if dataclasses.is_dataclass(kind) else None


def _default(field: dataclasses.Field) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return _MISSING


def _help(text: str, default: Any) -> str:
    if default is _MISSING or default is None or default is False:
        return text
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default {shown})".replace("%", "%%")


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add an option per documented field of ``cls`` (and of its nested configs)."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        nested = _nested(field, hints)
        if nested is not None:
            add_options(parser, nested, exclude=exclude, defaults=defaults)
            continue
        if "help" not in field.metadata:
            continue
        kwargs = {k: v for k, v in field.metadata.items() if k not in ("help", "flag", "parse")}
        default = defaults.get(field.name, _default(field))
        element, is_sequence = _base_type(hints[field.name])
        if element is bool:
            kwargs.setdefault("action", argparse.BooleanOptionalAction if default else "store_true")
        else:
            kwargs.setdefault("type", field.metadata.get("parse", element))
            if is_sequence:
                kwargs.setdefault("nargs", "+")
        if default is _MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        flag = _flag(field)
        if not flag.startswith("-"):  # a positional argument: its name is its dest
            kwargs.pop("required", None)
            parser.add_argument(flag, help=_help(field.metadata["help"], default), **kwargs)
            continue
        parser.add_argument(
            flag, dest=field.name, help=_help(field.metadata["help"], default), **kwargs
        )


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments; fields the parser lacks keep their defaults."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif (nested := _nested(field, hints)) is not None:
            values[field.name] = from_args(nested, args)
        elif hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def defaults_of(cls: type) -> dict[str, Any]:
    """Every field's default (nested configs included), keyed by field name."""
    return {
        field.name: _default(field)
        for field in dataclasses.fields(cls)
        if _default(field) is not _MISSING
    }
