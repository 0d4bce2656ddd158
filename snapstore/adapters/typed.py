"""Client objects <-> plain JSON, exactly.

Top-level fields of a dataclass are converted by their declared types: an
``Enum`` field is stored as its value, a ``datetime`` as ISO-8601 text, and
come back as the same enum member and the same naive (or aware) datetime;
such a field holding anything else but None (the text ``"active"``, a member
of another enum) is refused, since it would not come back as it was.
Values nested inside dicts and lists that JSON cannot hold (a datetime inside
``cross_sidebar_refs``, an enum inside metadata, a tuple) are stored tagged,
``{"$snapstore": "datetime", "value": "..."}``, so they too come back as
they were, and so are floats JSON has no text for (NaN, infinities).
Everything else is stored as it is; ``{}`` stays ``{}`` and ``None`` stays
``None``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import sys
import types
import typing
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from ..errors import InvalidInput
from ..objects import json_equal

TAG = "$snapstore"


def named_class(path: str) -> type | None:
    """The class named ``module:QualName`` (its module imported on demand); None if gone."""
    module_name, _, qualname = path.rpartition(":")
    try:
        target: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return target if isinstance(target, type) else None


def _enum_class(path: str) -> type[enum.Enum] | None:
    """The enum class named ``module:QualName``, imported on demand; None if gone."""
    target = named_class(path)
    return target if target is not None and issubclass(target, enum.Enum) else None


def is_instance_of_dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


# Exactly these types are JSON as they are (subclasses, such as an IntEnum,
# take the general path below; so do floats, which may be NaN or infinite).
_NATIVE = frozenset({str, int, bool, type(None)})


def encode_value(value: Any) -> Any:
    """A JSON-safe copy of a nested value, tagging what JSON cannot hold."""
    # Fast path: plain dicts and lists copied without a call per JSON-native
    # item (an exchange list is thousands of small dicts of strings).
    kind = type(value)
    if kind in _NATIVE:
        return value
    if kind is dict and TAG not in value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise InvalidInput(f"dict key {key!r} is not a string")
            out[key] = item if type(item) in _NATIVE else encode_value(item)
        return out
    if kind is list:
        return [item if type(item) in _NATIVE else encode_value(item) for item in value]
    if kind is float:
        return value if value - value == 0.0 else {TAG: "float", "value": repr(value)}  # nan, inf, -inf
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


# What decode_value gives back as it is.
_DECODED = frozenset({str, int, float, bool, type(None)})


def decode_value(value: Any) -> Any:
    """The inverse of :func:`encode_value`."""
    kind = type(value)
    if kind is list:
        return [item if type(item) in _DECODED else decode_value(item) for item in value]
    if kind is dict and TAG not in value:
        return {key: item if type(item) in _DECODED else decode_value(item) for key, item in value.items()}
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
    if tag == "float":
        return float(inner)
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
    """Each field's resolved type hint (None where it cannot be resolved)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        # A hint naming what only a type checker imports: resolve the others one by one (a
        # class holding only that annotation, in the field's module), so that one field
        # falls back to tags, not every field.
        hints = {}
        for f in dataclasses.fields(cls):
            owner = next((base for base in cls.__mro__ if f.name in base.__dict__.get("__annotations__", {})), cls)
            probe = type("_Probe", (), {"__annotations__": {f.name: f.type}, "__module__": owner.__module__})
            try:
                hints[f.name] = typing.get_type_hints(probe)[f.name]
            except Exception:
                continue
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


@functools.lru_cache(maxsize=64)
def _field_plan(cls: type) -> tuple[tuple[str, bool, bool, tuple[type, ...]], ...]:
    """``(name, declared as an enum, declared as a datetime, the classes declared)`` for each field."""
    plan = []
    for name, hint in _field_types(cls).items():
        kinds = _plain_types(hint)
        plan.append((name, any(isinstance(t, type) and issubclass(t, enum.Enum) for t in kinds),
                     datetime in kinds, tuple(kinds)))
    return tuple(plan)


def _check_converted(name: str, value: Any, kinds: tuple[type, ...]) -> None:
    """Refuse a value an enum or datetime field cannot give back: one not of the declared classes.

    Such a field is stored as the enum's value or as ISO text and converted
    back by its declared type on load, so anything else there (the text
    ``"active"``, a member of another enum, text that is not a date) would
    come back as something else, or make every load fail. None is kept as it is.
    """
    if value is None or isinstance(value, kinds):
        return
    wanted = " or ".join(k.__name__ for k in kinds if k is not type(None))
    raise InvalidInput(f"field {name!r} must be a {wanted} or None, not {type(value).__name__} {value!r}")


_UNMIRRORED = object()
# Leaves a mirror shares as they are: nothing else is ``==`` to a str or to None.
_SHARED = frozenset({str, type(None)})


class _Exact:
    """A bool or number leaf of a mirror: equal only to a value with the same JSON text.

    ``True == 1 == 1.0`` and ``0.0 == -0.0`` in Python, so a mirror sharing such
    a leaf would miss the client replacing one with another.
    """

    __slots__ = ("value",)

    def __init__(self, value: bool | int | float) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return json_equal(other, self.value) if type(other) is type(self.value) else False

    __hash__ = None  # type: ignore[assignment]


def mirror_of(value: Any) -> Any:
    """A copy of a JSON-native value's dicts and lists that shares its string leaves.

    Comparing a client's value with the mirror taken when it was last stored
    costs a pointer comparison per unchanged string instead of comparing the
    text: a leaf the client replaced is a new object and is compared, and a
    container it changed in place no longer matches the mirror's own copy.
    Bools and numbers are held as :class:`_Exact`, so that one replaced by
    an equal value of another type (``1`` by ``True``) is a change.
    Returns a private sentinel when the value holds anything else.
    """
    kind = type(value)
    if kind in _SHARED:
        return value
    if kind in _NATIVE:
        return _Exact(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                return _UNMIRRORED
            copy = item if type(item) in _SHARED else mirror_of(item)
            if copy is _UNMIRRORED:
                return _UNMIRRORED
            out[key] = copy
        return out
    if kind is list:
        items = []
        for item in value:
            copy = item if type(item) in _SHARED else mirror_of(item)
            if copy is _UNMIRRORED:
                return _UNMIRRORED
            items.append(copy)
        return items
    return _UNMIRRORED


class KnownList:
    """A list field as last stored: its items (plain JSON) and, if known, their :func:`mirror_of`.

    ``mirror[i]`` must be the mirror of the client value ``items[i]`` was
    encoded from.
    """

    __slots__ = ("items", "mirror")

    def __init__(self, items: list[Any], mirror: list[Any] | None = None) -> None:
        self.items = items
        self.mirror = mirror if mirror is not None and len(mirror) == len(items) else None


def _encode_list(value: Any, known: KnownList) -> tuple[Any, list[Any] | None]:
    """``encode_value(value)``, encoding only what follows the known items, and the value's new mirror.

    If ``value`` starts with items equal to all of ``known.items`` (compared
    with the mirror when there is one: leaf by pointer), those are taken from
    ``known.items`` (the result shares them: the caller must not hand it out)
    and only the items after them are encoded. Equality is JSON's
    (:func:`~snapstore.objects.json_equal`: ``1`` is not ``True``), as
    :meth:`snapstore.tree.Chain.sync` compares stored exchanges: what it
    keeps, this keeps.
    """
    if type(value) is not list:
        return encode_value(value), None
    k = len(known.items)
    if k and len(value) >= k:
        prefix = value[:k]
        by_mirror = known.mirror is not None and prefix == known.mirror
        if by_mirror or json_equal(prefix, known.items):
            tail = value[k:]
            out = list(known.items)
            out.extend(item if type(item) in _NATIVE else encode_value(item) for item in tail)
            if by_mirror:
                tail_mirror = mirror_of(tail)
                mirror = None if tail_mirror is _UNMIRRORED else known.mirror + tail_mirror
            else:
                whole = mirror_of(value)
                mirror = None if whole is _UNMIRRORED else whole
            return out, mirror
    out = encode_value(value)
    whole = mirror_of(value)
    return out, None if whole is _UNMIRRORED else whole


def to_json(obj: Any, known: Mapping[str, KnownList] | None = None,
            mirrors: dict[str, list[Any] | None] | None = None,
            optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A client context object (a dataclass or a dict) as a plain JSON dict.

    ``known``: field name -> that list field as last stored (see
    :class:`KnownList`), e.g. an exchange list: a list that only grew since
    is encoded from where it grew (see :func:`_encode_list`). ``mirrors``,
    if given, receives for each of those fields the :func:`mirror_of` its
    value now (None if it has none), to pass in the next ``known``. Fields
    named in ``optional`` are left out when their value cannot be stored.
    """
    known = known or {}
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif dataclasses.is_dataclass(obj):
        items = None
    else:
        raise InvalidInput(f"cannot store a {type(obj).__name__}: expected a dataclass or a dict")
    if items is not None:
        for name, value in items:
            if name in known:
                out[name], mirror = _encode_list(value, known[name])
                if mirrors is not None:
                    mirrors[name] = mirror
            elif name in optional:
                _encode_optional(out, name, value)
            else:
                out[name] = _encode_field(name, value)
        return out
    for name, enum_field, datetime_field, kinds in _field_plan(type(obj)):
        value = getattr(obj, name)
        if enum_field or datetime_field:
            _check_converted(name, value, kinds)
        if enum_field and isinstance(value, enum.Enum):
            out[name] = _encode_field(name, value.value)
        elif datetime_field and isinstance(value, datetime):
            out[name] = value.isoformat()
        elif name in known:
            out[name], mirror = _encode_list(value, known[name])
            if mirrors is not None:
                mirrors[name] = mirror
        elif name in optional:
            _encode_optional(out, name, value)
        else:
            out[name] = _encode_field(name, value)
    return out


def _encode_field(name: str, value: Any) -> Any:
    """``encode_value(value)``; a value that holds itself is refused by name, not a RecursionError."""
    try:
        return encode_value(value)
    except RecursionError:
        raise InvalidInput(f"field {name!r} contains itself or nests too deeply to store") from None


def _encode_optional(out: dict[str, Any], name: str, value: Any) -> None:
    try:
        out[name] = encode_value(value)
    except (InvalidInput, RecursionError):
        pass


@functools.lru_cache(maxsize=64)
def _load_plan(cls: type) -> tuple[tuple[tuple[str, type[enum.Enum] | None, bool], ...], frozenset[str]]:
    """``((name, its enum class or None, declared as a datetime), ...)`` and the init field names."""
    plan = []
    for name, hint in _field_types(cls).items():
        kinds = _plain_types(hint)
        plan.append((name, next((t for t in kinds if issubclass(t, enum.Enum)), None), datetime in kinds))
    return tuple(plan), frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def from_json(cls: type | None, data: dict[str, Any]) -> Any:
    """An instance of ``cls`` (a dataclass) from :func:`to_json` output; a dict if cls is None.

    Stored fields the class does not declare are left out; declared fields
    missing from the data take their defaults (:class:`InvalidInput` naming
    them if they have none). An enum or datetime field whose stored value
    does not convert comes back as stored. Every dict and list of the
    result is new: the result shares only immutable values with ``data``.
    """
    if cls is None:
        return {k: decode_value(v) for k, v in data.items()}
    plan, init_names = _load_plan(cls)
    missing = missing_fields(cls, data)
    if missing:
        raise InvalidInput(f"context {data.get('sidebar_id')!r} cannot be loaded as a {cls.__name__}: "
                           f"it has no {', '.join(map(repr, missing))}")
    kwargs: dict[str, Any] = {}
    for name, enum_kind, datetime_field in plan:
        if name not in data:
            continue
        value = data[name]
        if enum_kind is not None and value is not None:
            kwargs[name] = _as_member(enum_kind, decode_value(value))
        elif datetime_field and isinstance(value, str):
            kwargs[name] = _as_datetime(value)
        else:
            kwargs[name] = decode_value(value)
    instance = cls(**{k: v for k, v in kwargs.items() if k in init_names})
    for name, value in kwargs.items():
        if name not in init_names:
            setattr(instance, name, value)
    return instance


def _as_member(enum_kind: type[enum.Enum], value: Any) -> Any:
    """The member of ``enum_kind`` with this value; the value as stored if it names none.

    Saves refuse such a value (:func:`_check_converted`); one stored before
    they did, or through a dict, comes back as it is rather than making every
    load fail.
    """
    if isinstance(value, enum_kind):
        return value
    try:
        return enum_kind(value)
    except (ValueError, TypeError):
        return value


def _as_datetime(text: str) -> Any:
    """The datetime stored as ISO text; the text as stored if it is not one (see :func:`_as_member`)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def missing_fields(cls: type, data: Mapping[str, Any]) -> list[str]:
    """The fields ``cls`` requires (no default) that ``data`` lacks: an instance could not be made."""
    return [name for name in _required_fields(cls) if name not in data]


@functools.lru_cache(maxsize=64)
def _required_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING)
