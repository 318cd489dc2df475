"""The strict, typed loader behind every YAML file the pipeline reads.

:func:`build` turns a parsed YAML mapping into a frozen dataclass and refuses anything it does not
understand, naming the file and the dotted key: an unknown key (with the allowed ones), a missing
key, a wrong type, a value outside its choices. Configurations (:mod:`dnlrepro.core.config`) and
profiles (:mod:`dnlrepro.core.profile`) both go through it, so a typo in either fails the same way.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


def read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


_INDEX = re.compile(r"\[\d+\]$")  # "data.crop_size[0]" -> the range of "data.crop_size"


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "profile"}


def build(
    cls: type,
    raw: Any,
    source: str,
    prefix: str,
    extra: dict | None = None,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    hint: str = "",
    ranges: Mapping[str, Any] | None = None,
) -> Any:
    """``cls(**raw)`` after checking every key and type (recursively); errors name the key."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: key {where!r} must be a mapping, got {raw!r}")
    fields = field_types(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix + str(unknown[0])!r}; allowed keys here: "
            f"{', '.join(fields)}"
        )
    optional = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    missing = [k for k in fields if k not in raw and k not in optional]
    if missing:
        raise ConfigError(f"{source}: missing key {prefix + missing[0]!r} ({hint})")
    kwargs = {
        k: check_value(tp, raw[k], source, prefix + k, choices, hint, ranges)
        for k, tp in fields.items()
        if k in raw
    }
    kwargs.update(extra or {})
    return cls(**kwargs)


# Scalar field type -> (what an error says it must be, the types it accepts). A bool (a
# subclass of int in Python) is accepted only where a bool is expected.
_SCALARS: dict[type, tuple[str, Any]] = {
    bool: ("true or false", bool),
    int: ("an integer", int),
    float: ("a number", int | float),
    str: ("a string", str),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(
    tp: Any,
    value: Any,
    source: str,
    key: str,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    hint: str = "",
    ranges: Mapping[str, Any] | None = None,
) -> Any:
    """``value`` checked against type ``tp`` and, for dotted ``key``, its choices and its range
    (``ranges[key]`` supports ``in`` and ``str``; a list is checked element by element)."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key {key!r} must be {expected}, got {value!r}")

    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, key + ".", choices=choices, hint=hint, ranges=ranges)
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            out = None
        else:
            inner = [a for a in args if a is not type(None)]
            out = check_value(inner[0], value, source, key, choices, hint, ranges)
    elif origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise fail(f"a list of {_type_name(args[0])}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise fail(f"a list of {len(args)} values")
        out = tuple(
            check_value(a, v, source, f"{key}[{i}]", choices, hint, ranges)
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    elif tp in _SCALARS:
        expected, accepted = _SCALARS[tp]
        if isinstance(value, bool) is not (tp is bool) or not isinstance(value, accepted):
            raise fail(expected)
        out = float(value) if tp is float else value
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        out = dict(value)
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported type {tp} for {key}")
    allowed = (choices or {}).get(key)
    if allowed is not None and out not in allowed:
        raise ConfigError(
            f"{source}: key {key!r} is {value!r}; choose one of "
            f"{', '.join(repr(c) for c in allowed)}"
        )
    bounds = (ranges or {}).get(_INDEX.sub("", key))
    if bounds is not None and isinstance(out, int | float) and out not in bounds:
        raise ConfigError(f"{source}: key {key!r} is {value!r}; allowed: {bounds}")
    return out


def to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
