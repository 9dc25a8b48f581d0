"""Rows out of inference payloads: v1 ``instances``/``predictions`` and v2 tensors.

A batch of N instances becomes N rows; each row is one inference event's
``features`` and its answer (``prediction``, ``probabilities``). Shared by the
``kserve`` and ``oip`` formats.

>>> rows = v2_rows([{"name": "x", "shape": [2, 2], "datatype": "FP32",
...                  "data": [1, 2, 3, 4]}], 10)
>>> rows
[[1.0, 2.0], [3.0, 4.0]]
>>> answers = v2_answers([{"name": "p", "shape": [2, 2], "datatype": "FP32",
...                       "data": [[0.1, 0.9], [0.8, 0.2]]}], 10, None, None)
>>> [(a.prediction, a.probabilities) for a in answers]
[(1, [0.1, 0.9]), (0, [0.8, 0.2])]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

from detectors.events import BadEvent

from .base import MAX_STR, Decoded, make_event

__all__ = ["Answer", "Features", "pair_events", "v1_answers", "v1_rows", "v2_answers", "v2_rows"]

Features: TypeAlias = list[float] | dict[str, float | str | None]
#: Nested lists deeper than this in one tensor are refused (a tensor of rank 8 is plenty).
_MAX_RANK = 8


@dataclass(frozen=True, slots=True)
class Answer:
    prediction: str | int | float
    probabilities: list[float] | None = None


def _bad(detail: str) -> BadEvent:
    return BadEvent("invalid_value", detail)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        out = float(value)
        if math.isfinite(out):
            return out
        raise _bad("non-finite number in a tensor")
    raise _bad(f"expected a number, got {type(value).__name__}")


def _flatten(data: Any, limit: int) -> list[Any]:
    out: list[Any] = []
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list):
            if depth >= _MAX_RANK:
                raise _bad("tensor nested too deep")
            stack.extend((child, depth + 1) for child in reversed(node))
        else:
            out.append(node)
            if len(out) > limit:
                raise _bad(f"tensor holds more than {limit} values")
    return out


def _tensor(t: Any, max_items: int) -> tuple[str, int, int, list[Any]]:
    """(name, rows, width, flat values) of one v2 tensor, checked against its shape."""
    if not isinstance(t, dict):
        raise _bad("a tensor must be an object")
    name = t.get("name")
    shape = t.get("shape")
    if not isinstance(name, str) or not isinstance(shape, list) or not shape:
        raise _bad("a tensor needs a name and a non-empty shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad("tensor shape must hold non-negative integers")
    if len(shape) > _MAX_RANK:
        raise _bad("tensor rank above 8")
    rows = shape[0]
    if rows > max_items:
        raise BadEvent("too_many_items", f"batch of {rows} > {max_items}")
    width = 1
    for d in shape[1:]:
        width *= d
        if width > 1_000_000:
            raise _bad("tensor row too wide")
    flat = _flatten(t.get("data"), rows * width)
    if len(flat) != rows * width:
        raise _bad(f"tensor {name[:40]!r} has {len(flat)} values for shape {shape}")
    return name[:MAX_STR], rows, width, flat


def _cell(value: Any, datatype: Any) -> float | str:
    if datatype == "BYTES" or isinstance(value, str):
        return str(value)[:MAX_STR]
    return _number(value)


def v2_rows(inputs: Any, max_items: int) -> list[Features]:
    """One feature row per batch row of the v2 ``inputs`` tensors."""
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs must be a non-empty list of tensors")
    tensors = [(*_tensor(t, max_items), t.get("datatype")) for t in inputs[:256]]
    n = tensors[0][1]
    if any(rows != n for _, rows, _, _, _ in tensors):
        raise _bad("input tensors disagree on the batch size")
    if len(tensors) == 1 and tensors[0][4] != "BYTES":
        _, _, width, flat, _ = tensors[0]
        return [[_number(v) for v in flat[i * width:(i + 1) * width]] for i in range(n)]
    out: list[Features] = []
    for i in range(n):
        row: dict[str, float | str | None] = {}
        for name, _, width, flat, dtype in tensors:
            cells = flat[i * width:(i + 1) * width]
            if width == 1:
                row[name] = _cell(cells[0], dtype)
            else:
                row.update({f"{name}[{j}]": _cell(v, dtype) for j, v in enumerate(cells)})
        out.append(row)
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def v2_answers(
    outputs: Any, max_items: int, prediction_output: str | None, probabilities_output: str | None
) -> list[Answer]:
    """One answer per batch row of the v2 ``outputs`` tensors.

    The prediction tensor is the one named ``prediction_output``, else the first
    of width 1; the probabilities are ``probabilities_output``, else the first
    numeric tensor wider than 1 (its argmax is the prediction when no tensor
    holds one).
    """
    if not isinstance(outputs, list) or not outputs:
        raise _bad("outputs must be a non-empty list of tensors")
    tensors = [(*_tensor(t, max_items), t.get("datatype")) for t in outputs[:256]]
    pred = probs = None
    for tensor in tensors:
        name, _, width, _, dtype = tensor
        if prediction_output is not None:
            if name == prediction_output:
                pred = tensor
        elif pred is None and width == 1:
            pred = tensor
        if probabilities_output is not None:
            if name == probabilities_output:
                probs = tensor
        elif probs is None and width > 1 and dtype != "BYTES":
            probs = tensor
    if pred is None and probs is None:
        raise _bad("no output tensor holds a prediction")
    n = (pred or probs)[1]  # type: ignore[index]
    if pred is not None and probs is not None and probs[1] != n:
        raise _bad("output tensors disagree on the batch size")
    answers = []
    for i in range(n):
        p = None
        if probs is not None:
            w = probs[2]
            p = [_number(v) for v in probs[3][i * w:(i + 1) * w]]
        if pred is not None:
            w = pred[2]
            value = _cell(pred[3][i * w], pred[4])
            label: str | int | float = (
                int(value) if isinstance(value, float) and value.is_integer() else value
            )
        else:
            assert p is not None
            label = _argmax(p)
        answers.append(Answer(label, p))
    return answers


def _instance(value: Any) -> Features:
    if isinstance(value, list):
        return [_number(v) for v in _flatten(value, 1_000_000)]
    if isinstance(value, dict):
        row: dict[str, float | str | None] = {}
        for key, cell in list(value.items())[:10_000]:
            if cell is None or isinstance(cell, str):
                row[str(key)[:MAX_STR]] = cell if cell is None else cell[:MAX_STR]
            else:
                row[str(key)[:MAX_STR]] = _number(cell)
        return row
    if isinstance(value, str):
        return {"input": value[:MAX_STR]}
    return [_number(value)]


def v1_rows(body: Any, max_items: int) -> list[Features]:
    """Rows of a v1 request: ``{"instances": [...]}`` (or TF's ``{"inputs": [...]}``)."""
    if not isinstance(body, dict):
        raise _bad("v1 request must be an object")
    rows = body.get("instances", body.get("inputs"))
    if not isinstance(rows, list) or not rows:
        raise _bad("v1 request needs a non-empty instances list")
    if len(rows) > max_items:
        raise BadEvent("too_many_items", f"batch of {len(rows)} > {max_items}")
    return [_instance(r) for r in rows]


def _v1_answer(value: Any) -> Answer:
    if isinstance(value, dict):
        probs = value.get("probabilities", value.get("scores"))
        label = value.get("label", value.get("class", value.get("prediction")))
        p = [_number(v) for v in probs] if isinstance(probs, list) and probs else None
        if label is None and p is not None:
            return Answer(_argmax(p), p)
        return Answer(_v1_label(label), p)
    if isinstance(value, list) and value:
        p = [_number(v) for v in _flatten(value, 100_000)]
        return Answer(_argmax(p), p)
    return Answer(_v1_label(value))


def _v1_label(value: Any) -> str | int | float:
    if isinstance(value, str):
        return value[:MAX_STR]
    number = _number(value)
    return int(number) if number.is_integer() and not isinstance(value, float) else number


def v1_answers(body: Any, max_items: int) -> list[Answer]:
    """Answers of a v1 response: ``{"predictions": [...]}`` (or TF's ``{"outputs"}``)."""
    if not isinstance(body, dict):
        raise _bad("v1 response must be an object")
    rows = body.get("predictions", body.get("outputs"))
    if not isinstance(rows, list) or not rows:
        raise _bad("v1 response needs a non-empty predictions list")
    if len(rows) > max_items:
        raise BadEvent("too_many_items", f"batch of {len(rows)} > {max_items}")
    return [_v1_answer(r) for r in rows]


def pair_events(
    request_id: str, request: dict[str, Any], response: dict[str, Any]
) -> list[Decoded]:
    """Inference events (with their item index) from a joined request and response.

    ``request`` holds ``rows``, ``ts`` and ``ctx``; ``response`` holds
    ``answers`` ([prediction, probabilities] pairs), ``ts`` and ``ctx``. A
    batch of N rows gives N events, ``request_id#i`` each; one row keeps the
    plain id and no item index. Rows and answers must be as many.
    """
    rows, answers = request["rows"], response["answers"]
    if len(rows) != len(answers):
        raise _bad(f"request has {len(rows)} rows but the response {len(answers)} answers")
    ctx = {**response["ctx"], **{k: v for k, v in request["ctx"].items() if v is not None}}
    attributes = {**response["ctx"].get("attributes", {}), **request["ctx"].get("attributes", {})}
    t_req, t_resp = request.get("ts"), response.get("ts")
    latency = (
        round(max(0.0, (t_resp - t_req) * 1000.0), 3)
        if isinstance(t_req, float | int) and isinstance(t_resp, float | int) else None
    )
    batch = len(rows) > 1
    out = []
    for i, (features, (prediction, probabilities)) in enumerate(zip(rows, answers, strict=True)):
        fields: dict[str, Any] = {
            "ts": t_resp if t_resp is not None else t_req,
            "model_id": ctx["model_id"],
            "request_id": f"{request_id}#{i}" if batch else request_id,
            "principal": ctx["principal"],
            "features": features,
            "prediction": prediction,
        }
        for key in ("model_version", "source_ip"):
            if ctx.get(key) is not None:
                fields[key] = ctx[key]
        if probabilities is not None:
            fields["probabilities"] = probabilities
        if latency is not None:
            fields["latency_ms"] = latency
        if attributes:
            fields["attributes"] = attributes
        out.append(Decoded(make_event("inference", fields), i if batch else None))
    return out
