"""Streams of inference events for the telemetry tests: stationary, shifted, from real models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detectors.events import InferenceEvent

T0 = 1_767_225_600.0


def event(
    i: int,
    features: list[float] | dict[str, float | str | None],
    prediction: int | float | str,
    *,
    model: str = "m",
    version: str | None = "1",
    principal: str = "svc",
    probabilities: list[float] | None = None,
    label: int | str | None = None,
) -> InferenceEvent:
    return InferenceEvent(
        ts=T0 + i * 0.01,
        model_id=model,
        model_version=version,
        request_id=f"r{i}",
        principal=principal,
        features=features,
        prediction=prediction,
        probabilities=probabilities,
        label=label,
    )


def stationary(n: int, seed: int = 0, models: int = 2, d: int = 8) -> list[InferenceEvent]:
    """A long stationary stream: logistic model, half list / half dict features, 10 % labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    p1 = 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 1])))
    pred = (p1 > 0.5).astype(int)
    truth = np.where(rng.random(n) < p1, 1, 0)
    labelled = rng.random(n) < 0.1
    who = rng.integers(0, 40, size=n)
    names = [f"f{j}" for j in range(d)]
    out = []
    for i in range(n):
        row = x[i].tolist()
        feats: list[float] | dict[str, float | str | None] = (
            row if i % 2 else dict(zip(names, row, strict=True))
        )
        out.append(
            event(
                i,
                feats,
                int(pred[i]),
                model=f"m{i % models}",
                principal=f"user-{who[i]}",
                probabilities=[1 - p1[i], p1[i]],
                label=int(truth[i]) if labelled[i] else None,
            )
        )
    return out


def from_model(
    model,
    x: np.ndarray,
    *,
    principals: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    label_every: int = 0,
    start: int = 0,
    name: str = "clf",
) -> list[InferenceEvent]:
    """Events of a scikit-learn classifier answering the rows of ``x`` (list features)."""
    proba = model.predict_proba(x)
    classes = model.classes_
    out = []
    for i in range(len(x)):
        k = int(np.argmax(proba[i]))
        label = None
        if labels is not None and label_every and i % label_every == 0:
            label = int(labels[i])
        out.append(
            event(
                start + i,
                x[i].tolist(),
                int(classes[k]),
                model=name,
                principal=principals[i] if principals is not None else f"user-{i % 9}",
                probabilities=proba[i].tolist(),
                label=label,
            )
        )
    return out
