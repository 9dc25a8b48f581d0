"""Detector state as data named by stable names, not by where the code lives.

A snapshot used to pickle a detector's ``__dict__``: every object in it was
written as ``module.QualifiedName``, so renaming a private class or moving a
module made every restart raise, and every attribute (config-derived ones
too) came back from the checkpoint. Here:

- a class whose instances are part of some detector's state registers under
  a stable name with :func:`state_type` (``@state_type("entity_table")``) and
  is written as that name and its attributes by name; renaming or moving the
  class keeps its checkpoints readable, as long as the registered name stays;
- :func:`encode` refuses an object of a class of ours that is not registered
  (the conformance suite snapshots every detector, so a new state class
  without a name fails a test, not a restart);
- :func:`decode` reads with an unpickler whose ``find_class`` resolves only
  the codec's own reconstructor, a short list of builtin and numpy
  reconstructors, and *classes* (never functions) of the numerical libraries
  the telemetry adapters wrap (river, pyod, scikit-learn, scipy); anything
  else is refused as ``unknown_type``.

A state that cannot be read raises :class:`StateUnreadable` with a short
``reason`` (``version``, ``unknown_type``, ``corrupt``) for logs and metrics.

>>> @state_type("doctest.counter")
... class Counter:
...     def __init__(self) -> None:
...         self.n = 0
>>> c = Counter(); c.n = 3
>>> raw = encode({"c": c})
>>> Counter.__qualname__ = "RenamedCounter"   # a refactor renames the class
>>> decode(raw)["c"].n
3
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec

__all__ = ["StateUnreadable", "decode", "encode", "state_type"]

T = TypeVar("T", bound=type)

#: Stable name -> class, and back.
_BY_NAME: dict[str, type] = {}
_NAME_OF: dict[type, str] = {}

#: Top-level packages whose classes must be registered to be encoded.
_OURS: Final = frozenset({"detectors", "daemon", "playbooks"})

#: Reconstructors a state pickle may name (module, name) besides the registry.
_ALLOWED_GLOBALS: Final = frozenset({
    ("collections", "OrderedDict"),
    ("collections", "deque"),
    ("collections", "Counter"),
    ("collections", "defaultdict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "str"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
})
#: Libraries behind detectors/telemetry/adapters.py: their *classes* may be named
#: (a river drift detector, a pyod/scikit-learn estimator), their functions not.
_LIBRARY_CLASSES: Final = ("river.", "pyod.", "sklearn.", "scipy.", "numpy.random.")


class StateUnreadable(ValueError):
    """A saved state this version cannot use; ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def state_type(name: str) -> Callable[[T], T]:
    """Class decorator: instances are encoded under ``name`` (keep it forever)."""

    def register(cls: T) -> T:
        known = _BY_NAME.get(name)
        if known is not None and known is not cls \
                and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"state type name {name!r} is taken by {known.__qualname__}")
        _BY_NAME[name] = cls
        _NAME_OF[cls] = name
        return cls

    return register


def _custom_state(cls: type) -> bool:
    """True if ``cls`` chose what it saves (its own ``__getstate__``/``__setstate__``)."""
    get = getattr(cls, "__getstate__", None)
    return get is not None and get is not object.__getstate__ \
        and getattr(get, "__qualname__", "") != "_dataclass_getstate" \
        and hasattr(cls, "__setstate__")


def _attributes(obj: Any) -> dict[str, Any]:
    """An instance's attributes by name (``__dict__`` and every set slot)."""
    cls = type(obj)
    if isinstance(obj, msgspec.Struct):
        return {f: getattr(obj, f) for f in cls.__struct_fields__}
    if isinstance(obj, tuple) and hasattr(cls, "_fields"):  # NamedTuple
        return dict(zip(cls._fields, obj, strict=True))
    if dataclasses.is_dataclass(obj) and not hasattr(obj, "__dict__"):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    out = dict(getattr(obj, "__dict__", {}))
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                out[slot] = getattr(obj, slot)
    return out


def _rebuild(name: str, custom: bool, state: Any) -> Any:
    """The instance of state type ``name`` holding ``state`` (the one reconstructor)."""
    cls = _BY_NAME.get(name)
    if cls is None:
        raise StateUnreadable("unknown_type", f"no state type named {name!r}")
    if issubclass(cls, msgspec.Struct) or (issubclass(cls, tuple) and hasattr(cls, "_fields")):
        return cls(**state)
    obj: Any = cls.__new__(cls)
    if custom:
        obj.__setstate__(state)
        return obj
    for key, value in state.items():
        object.__setattr__(obj, key, value)
    return obj


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        name = _NAME_OF.get(cls)
        if name is not None:
            if _custom_state(cls):
                return _rebuild, (name, True, obj.__getstate__())
            return _rebuild, (name, False, _attributes(obj))
        if obj is _rebuild:
            return NotImplemented
        if isinstance(obj, type):
            module = obj.__module__
        elif callable(obj) and hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
            module = str(obj.__module__)
        else:
            module = cls.__module__
        if module.split(".")[0] in _OURS:
            what = obj.__qualname__ if isinstance(obj, type) or callable(obj) else cls.__qualname__
            raise TypeError(f"{module}.{what} is in a detector's state but not a registered "
                            "state type: decorate it with @state_type(\"stable.name\")")
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "_rebuild" and module == __name__:
            return _rebuild
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module.startswith(_LIBRARY_CLASSES):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise StateUnreadable("unknown_type", f"{module}.{name} is not allowed in a state")


def encode(value: Any) -> bytes:
    """``value`` (plain data, numpy, registered state types) as bytes."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def decode(raw: bytes) -> Any:
    """What :func:`encode` wrote; :class:`StateUnreadable` if it cannot be used."""
    try:
        return _Unpickler(io.BytesIO(raw)).load()
    except StateUnreadable:
        raise
    except Exception as exc:
        raise StateUnreadable("corrupt", f"{type(exc).__name__}: {exc}"[:200]) from None


def _register_shared() -> None:
    """Shared value types that live in modules which must not import this one."""
    from detectors import events, findings
    from detectors.context import InMemoryContextTable, PipelineRun

    for stable, cls in (("event.inference", events.InferenceEvent),
                        ("event.audit", events.AuditEvent),
                        ("event.access", events.AccessEvent),
                        ("event.geo", events.Geo),
                        ("finding.source", findings.Source),
                        ("context.table", InMemoryContextTable),
                        ("context.run", PipelineRun)):
        state_type(stable)(cls)

_register_shared()
