"""The explicit list of detectors that config can name (no import side effects).

Each family package exposes ``DETECTORS``, a tuple of Detector classes; this
module joins them. :func:`build` validates a config's params against the
detector's ``__init__`` signature with pydantic, so a typo or a wrong type is
reported at start with the detector's name and the field.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

import pydantic

from detectors import abuse, access, telemetry
from detectors.base import Detector

__all__ = ["REGISTRY", "ParamsError", "build", "params_model"]

REGISTRY: Final[dict[str, type[Detector]]] = {
    cls.name: cls for family in (abuse, access, telemetry) for cls in family.DETECTORS
}


class ParamsError(ValueError):
    """Config params that do not fit a detector; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@cache
def params_model(cls: type[Detector]) -> type[pydantic.BaseModel]:
    """A strict pydantic model of ``cls.__init__``'s keyword arguments."""
    fields: dict[str, Any] = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        annotation = param.annotation if param.annotation is not param.empty else Any
        default = param.default if param.default is not param.empty else ...
        fields[param.name] = (annotation, default)
    hints = inspect.get_annotations(cls.__init__, eval_str=True)
    for name, (_, default) in list(fields.items()):
        if name in hints:
            fields[name] = (hints[name], default)
    return pydantic.create_model(
        f"{cls.__name__}Params",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )


def validate_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Checked keyword arguments for detector ``name``; raises ParamsError."""
    cls = REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise ParamsError([f"unknown detector {name!r} (known: {known})"])
    try:
        model = params_model(cls).model_validate(dict(params))
    except pydantic.ValidationError as exc:
        raise ParamsError(
            [
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False)
            ]
        ) from None
    return {key: getattr(model, key) for key in model.model_fields_set | set(params)}


def build(name: str, params: Mapping[str, Any] | None = None) -> Detector:
    """A new detector ``name`` configured with ``params`` (validated)."""
    kwargs = validate_params(name, params or {})
    return REGISTRY[name](**kwargs)
