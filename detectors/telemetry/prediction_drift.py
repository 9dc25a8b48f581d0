"""Prediction drift of a model against its reference.

The same test as :mod:`detectors.telemetry.feature_drift`, on the model's
predictions: the population stability index of a sliding window against
reference bins (classes, or quantile bins of a regression's values), beyond
both the false-alarm budget and ``min_psi``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Finding, Severity, Source
from detectors.state_codec import state_type
from detectors.telemetry.features import attribute, scope_phrase
from detectors.telemetry.stats import (
    alpha_per_evaluation,
    category_codes,
    js_distance,
    psi,
    psi_null_thresholds,
)
from detectors.telemetry.window import (
    ATLAS_EVASION,
    Block,
    ModelState,
    WindowedModelDetector,
)

__all__ = ["PredictionDriftDetector"]


@state_type("telemetry.prediction_reference")
class _PredictionReference:
    __slots__ = ("classes", "edges", "labels", "n", "p_ref", "regression", "threshold")
    classes: dict[Any, int]
    edges: np.ndarray
    labels: list[str]
    n: int
    p_ref: np.ndarray
    regression: bool
    threshold: float


class PredictionDriftDetector(WindowedModelDetector):
    """Prediction drift: class distribution (or binned regression output) against the reference.

    Classification (at most ``max_classes`` distinct predictions, or any
    string): the share of each of the ``max_classes`` most frequent reference
    classes plus "other". Regression (more numeric values): ``bins`` reference
    quantile bins. Drift when PSI exceeds both ``min_psi`` and the bootstrap
    null threshold at false-positive rate ``step / ert``; findings give the
    class shares that moved most and the callers that explain it.

    >>> from detectors.testing import feed
    >>> def ev(i, p):
    ...     return InferenceEvent(ts=i, model_id="m", request_id=str(i), principal="p",
    ...         features=[0.0], prediction=int(i % 10 < p))
    >>> det = PredictionDriftDetector(reference_size=1000, window=500, step=100)
    >>> feed(det, [ev(i, 3) for i in range(5000)])
    []
    >>> [(f.kind, f.evidence["top_classes"][0]["window_share"]) for f in
    ...  feed(det, [ev(i, 7) for i in range(5000, 6000)])]
    [('drift', 0.46)]
    """

    name: ClassVar[str] = "drift.prediction"
    overridable: ClassVar[tuple[str, ...]] = ("ert", "min_psi")

    def __init__(
        self,
        reference_size: int = 2000,
        window: int = 1000,
        step: int = 250,
        ert: float = 1e8,
        min_psi: float = 0.1,
        max_classes: int = 20,
        bins: int = 10,
        sample_every: int = 1,
        max_models: int = 64,
        reference_path: str | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
    ) -> None:
        self.min_psi = min_psi
        self.max_classes = max_classes
        self.bins = bins
        super().__init__(
            reference_size=reference_size,
            window=window,
            step=step,
            ert=ert,
            sample_every=sample_every,
            max_models=max_models,
            reference_path=reference_path,
            overrides=overrides,
            seed=seed,
        )

    def _slots(self, ref: _PredictionReference) -> int:
        return self.bins if ref.regression else self.max_classes + 1

    def _codes(self, ref: _PredictionReference, values: list[Any]) -> np.ndarray:
        if ref.regression:
            x = np.array([v if isinstance(v, int | float) else np.nan for v in values], float)
            c = np.searchsorted(ref.edges, x, side="right")
            c[np.isnan(x)] = self.bins - 1
            return c
        other = self.max_classes
        get = ref.classes.get
        return np.array([get(v, other) for v in values], dtype=np.int64)

    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        values = [e.prediction for e in events]
        ref: _PredictionReference | None = st.ref
        if ref is None:
            return values
        codes = self._codes(ref, values)
        return codes, np.bincount(codes, minlength=self._slots(ref))

    def fit_reference(self, st: ModelState, blocks: list[Block]) -> _PredictionReference:
        values = [v for b in blocks for v in b.data]
        ref = _PredictionReference()
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ref.regression = numeric and len(set(values)) > self.max_classes
        ref.classes = {} if ref.regression else category_codes(values, self.max_classes)
        ref.labels = [str(c) for c in ref.classes] + ["other"]
        ref.edges = (
            np.unique(
                np.quantile(np.asarray(values, float), np.linspace(0, 1, self.bins + 1)[1:-1])
            )
            if ref.regression
            else np.empty(0)
        )
        if ref.regression:
            ref.labels = [f"bin{i}" for i in range(self.bins)]
        ref.n = len(values)
        counts = np.bincount(self._codes(ref, values), minlength=self._slots(ref))
        ref.p_ref = counts / max(ref.n, 1)
        alpha = alpha_per_evaluation(self.step, st.params["ert"])
        null = psi_null_thresholds(
            ref.p_ref[None, :], ref.n, self.window_rows, alpha, self.rng_for(st)
        )
        ref.threshold = max(st.params["min_psi"], float(null[0]))
        return ref

    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        ref: _PredictionReference = st.ref
        counts = sum(b.data[1] for b in blocks)
        n = int(counts.sum())
        p_win = counts / n
        value = float(psi(ref.p_ref, p_win))
        if value < ref.threshold:
            return None
        codes = np.concatenate([b.data[0] for b in blocks])
        slots = self._slots(ref)

        def window_score(mask: np.ndarray) -> float:
            sub = np.bincount(codes[mask], minlength=slots) / int(mask.sum())
            return float(psi(ref.p_ref, sub)) / ref.threshold

        who = attribute([p for b in blocks for p in b.principals], window_score)
        change = p_win - ref.p_ref
        order = np.argsort(-np.abs(change))[:5]
        top = [
            {
                "class": ref.labels[i] if i < len(ref.labels) else "other",
                "reference_share": round(float(ref.p_ref[i]), 4),
                "window_share": round(float(p_win[i]), 4),
            }
            for i in order.tolist()
            if ref.p_ref[i] > 0 or p_win[i] > 0
        ]
        single = who["scope"] == "single_principal"
        severity: Severity = "high" if single or value >= 3 * ref.threshold else "medium"
        lead = top[0]
        return self.finding(
            st,
            kind="drift",
            severity=severity,
            summary=(
                f"Predictions of model {st.model_id} (version {st.version or '-'}) shifted "
                f"(PSI {value:.2f} > {ref.threshold:.2f}; {lead['class']}: "
                f"{lead['reference_share']:.0%} -> {lead['window_share']:.0%}), "
                f"{scope_phrase(who)}."
            ),
            evidence={
                "statistic": "psi",
                "observed": round(value, 4),
                "threshold": round(ref.threshold, 4),
                "js_distance": round(float(js_distance(ref.p_ref, p_win)), 4),
                "output": "regression" if ref.regression else "classes",
                "top_classes": top,
                "events_examined": n,
                "attribution": who,
            },
            atlas=ATLAS_EVASION if single else [],
            event=event,
            source=source,
        )
