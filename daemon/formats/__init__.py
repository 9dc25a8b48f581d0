"""Input formats: one Kafka message (value, headers, timestamp) to contract events.

The registry below is explicit (no import side effects): a name, as used in
config and on the command line, to the format's class and its options model.
:func:`make_format` validates the options (pydantic: a bad option fails at
start with one line per problem) and returns a ready :class:`Format`.

The daemon reads every input topic through its format (``input.formats`` in
the config; the contract's three topics default to ``contract``), one
instance per input partition, its state checkpointed with the partition's
(see README, "Input formats").

>>> fmt = make_format("cloudtrail", {"training_buckets": ["ml-train"]})
>>> fmt.name, sorted(FORMATS)
('cloudtrail', ['cloudtrail', 'contract', 'k8s-audit', 'kserve', 'litellm', 'oip'])
>>> make_format("kserve", {"max_wait_s": -1})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
daemon.formats.FormatConfigError: format kserve: max_wait_s: Input should be greater than 0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from .base import DeadLetter, Decoded, Format, FormatOptions, Headers, Limits, Result
from .cloudtrail import CloudTrailFormat, CloudTrailOptions
from .contract import ContractFormat, ContractOptions
from .k8s_audit import K8sAuditFormat, K8sAuditOptions
from .kserve import KServeFormat, KServeOptions
from .litellm import LiteLLMFormat, LiteLLMOptions
from .oip import OipFormat, OipOptions

__all__ = [
    "FORMATS",
    "DeadLetter",
    "Decoded",
    "Format",
    "FormatConfigError",
    "FormatOptions",
    "FormatSpec",
    "Headers",
    "Limits",
    "Result",
    "make_format",
]


class FormatConfigError(ValueError):
    """Unknown format name or invalid options; the message has one line per problem."""


@dataclass(frozen=True)
class FormatSpec:
    name: str
    options: type[FormatOptions]
    factory: Callable[[Any], Format]  # the format class, given a validated options model
    description: str


FORMATS: Final[dict[str, FormatSpec]] = {
    spec.name: spec
    for spec in (
        FormatSpec("contract", ContractOptions, ContractFormat,
                   "mlwatchd's contract JSON events (the default)"),
        FormatSpec("kserve", KServeOptions, KServeFormat,
                   "KServe inference logger CloudEvents, request/response joined by ce-id"),
        FormatSpec("oip", OipOptions, OipFormat,
                   "Open Inference Protocol v2 request/response (Seldon Core 2, Triton)"),
        FormatSpec("litellm", LiteLLMOptions, LiteLLMFormat,
                   "LiteLLM proxy StandardLoggingPayload, no prompt or completion text kept"),
        FormatSpec("cloudtrail", CloudTrailOptions, CloudTrailFormat,
                   "AWS CloudTrail records: S3 training data, SageMaker, Bedrock, logins, IAM"),
        FormatSpec("k8s-audit", K8sAuditOptions, K8sAuditFormat,
                   "Kubernetes audit.k8s.io/v1 events: RBAC bindings, secrets, InferenceServices"),
    )
}


def make_format(name: str, options: Mapping[str, Any] | None = None) -> Format:
    """A new format instance of ``name`` with validated ``options``."""
    spec = FORMATS.get(name)
    if spec is None:
        raise FormatConfigError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))}")
    try:
        opts = spec.options.model_validate(dict(options or {}))
    except ValidationError as exc:
        lines = [
            f"format {name}: {'.'.join(str(p) for p in err['loc']) or '(options)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise FormatConfigError("\n".join(lines)) from None
    return spec.factory(opts)
