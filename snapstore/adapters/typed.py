"""Client objects <-> plain JSON, exactly.

Top-level fields of a dataclass are converted by their declared types: an
``Enum`` field is stored as its value, a ``datetime`` as ISO-8601 text, and
come back as the same enum member and the same naive (or aware) datetime.
Values nested inside dicts and lists that JSON cannot hold (a datetime inside
``cross_sidebar_refs``, an enum inside metadata, a tuple) are stored tagged,
``{"$snapstore": "datetime", "value": "..."}``, so they too come back as
they were. Everything else is stored as it is; ``{}`` stays ``{}`` and
``None`` stays ``None``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import types
import typing
from datetime import date, datetime
from typing import Any

from ..errors import InvalidInput

TAG = "$snapstore"


def _enum_class(path: str) -> type[enum.Enum] | None:
    """The enum class named ``module.QualName``, imported on demand; None if gone."""
    module_name, _, qualname = path.rpartition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return target if isinstance(target, type) and issubclass(target, enum.Enum) else None


def encode_value(value: Any) -> Any:
    """A JSON-safe copy of a nested value, tagging what JSON cannot hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "class": f"{type(value).__module__}:{type(value).__qualname__}",
                "value": encode_value(value.value)}
    if isinstance(value, datetime):
        return {TAG: "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {TAG: "date", "value": value.isoformat()}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"dict key {key!r} is not a string")
            out[key] = encode_value(item)
        if TAG in value:
            return {TAG: "dict", "value": out}
        return out
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return {TAG: "tuple", "value": [encode_value(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {TAG: "set", "value": sorted((encode_value(v) for v in value), key=repr)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise InvalidInput(f"cannot store a value of type {type(value).__name__}")


def decode_value(value: Any) -> Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: decode_value(v) for k, v in value.items()}
    inner = value.get("value")
    if tag == "datetime":
        return datetime.fromisoformat(inner)
    if tag == "date":
        return date.fromisoformat(inner)
    if tag == "tuple":
        return tuple(decode_value(v) for v in inner)
    if tag == "set":
        return {decode_value(v) for v in inner}
    if tag == "dict":
        return {k: decode_value(v) for k, v in inner.items()}
    if tag == "enum":
        cls = _enum_class(str(value.get("class", "")))
        return cls(decode_value(inner)) if cls is not None else decode_value(inner)
    return {k: decode_value(v) for k, v in value.items()}


@functools.lru_cache(maxsize=64)
def _field_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to tags only
        hints = {}
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}


def _plain_types(hint: Any) -> list[type]:
    """The concrete classes a type hint allows (Optional/Union unwrapped)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(hint):
            out.extend(_plain_types(arg))
        return out
    return [hint] if isinstance(hint, type) else []


def to_json(obj: Any) -> dict[str, Any]:
    """A client context object (a dataclass or a dict) as a plain JSON dict."""
    if isinstance(obj, dict):
        return {k: encode_value(v) for k, v in obj.items()}
    if not dataclasses.is_dataclass(obj):
        raise InvalidInput(f"cannot store a {type(obj).__name__}: expected a dataclass or a dict")
    types_by_field = _field_types(type(obj))
    out: dict[str, Any] = {}
    for name in types_by_field:
        value = getattr(obj, name)
        if isinstance(value, enum.Enum) and any(
            isinstance(t, type) and issubclass(t, enum.Enum) for t in _plain_types(types_by_field[name])
        ):
            out[name] = value.value
        elif isinstance(value, datetime) and datetime in _plain_types(types_by_field[name]):
            out[name] = value.isoformat()
        else:
            out[name] = encode_value(value)
    return out


def from_json(cls: type | None, data: dict[str, Any]) -> Any:
    """An instance of ``cls`` (a dataclass) from :func:`to_json` output; a dict if cls is None.

    Stored fields the class does not declare are left out; declared fields
    missing from the data take their defaults.
    """
    if cls is None:
        return {k: decode_value(v) for k, v in data.items()}
    kwargs: dict[str, Any] = {}
    for name, hint in _field_types(cls).items():
        if name not in data:
            continue
        value = data[name]
        kinds = _plain_types(hint)
        enum_kind = next((t for t in kinds if issubclass(t, enum.Enum)), None)
        if enum_kind is not None and not isinstance(value, dict) and value is not None:
            kwargs[name] = enum_kind(value)
        elif datetime in kinds and isinstance(value, str):
            kwargs[name] = datetime.fromisoformat(value)
        else:
            kwargs[name] = decode_value(value)
    init_names = {f.name for f in dataclasses.fields(cls) if f.init}
    instance = cls(**{k: v for k, v in kwargs.items() if k in init_names})
    for name, value in kwargs.items():
        if name not in init_names:
            setattr(instance, name, value)
    return instance
