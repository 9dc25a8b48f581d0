"""Performance of a model without labels (CBPE), and with them when they arrive.

Confidence-based performance estimation (NannyML's CBPE): with calibrated
scores, the probability that an answer is right is its calibrated confidence,
so a window's expected accuracy is their mean, with no label needed. The
calibration is an isotonic fit of correctness on confidence over the labelled
reference events; without enough reference labels the scores are taken as
calibrated (said in the evidence, ``calibrated: false``).

When events carry ``label``, the realised error stream also goes to a river
drift detector (DDM by default) through :class:`~detectors.telemetry.adapters.StreamDrift`;
a change it signals is confirmed by the accuracy of the last ``label_window``
labels against the labelled baseline (the same budget and minimum drop), so a
measured drop is reported as such.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Finding, Severity, Source
from detectors.state_codec import state_type
from detectors.telemetry.adapters import STREAM_DRIFT_METHODS, StreamDrift
from detectors.telemetry.features import attribute, scope_phrase
from detectors.telemetry.stats import (
    alpha_per_evaluation,
    apply_isotonic,
    fit_isotonic,
    mean_shift_margin,
    normal_isf,
)
from detectors.telemetry.window import (
    Block,
    ModelState,
    WindowedModelDetector,
)

__all__ = ["PerformanceEstimateDetector", "correctness"]


def correctness(label: Any, prediction: Any) -> int:
    """1 when the label matches the prediction (1 and "1" match), 0 if not, -1 without label."""
    if label is None:
        return -1
    return int(label == prediction or str(label) == str(prediction))


@state_type("telemetry.labels")
class _Labels:
    """Realised accuracy tracking of one model: baseline, recent labels, river detector."""

    __slots__ = ("base_n", "base_right", "detector", "measured", "recent", "suspect")

    def __init__(self, method: str, window: int) -> None:
        self.detector = StreamDrift(method)
        self.recent: deque[int] = deque(maxlen=window)
        self.base_n = 0
        self.base_right = 0
        self.measured: dict[str, Any] | None = None
        #: Labels left in which to confirm the stream detector's last signal.
        self.suspect = 0


@state_type("telemetry.performance_reference")
class _PerformanceReference:
    __slots__ = (
        "calibrated",
        "estimate",
        "isotonic",
        "labelled",
        "measured",
        "n",
        "sd",
        "threshold",
    )
    calibrated: bool
    estimate: float
    isotonic: tuple[np.ndarray, np.ndarray] | None
    labelled: int
    measured: float
    n: int
    sd: float
    threshold: float


class PerformanceEstimateDetector(WindowedModelDetector):
    """Estimated (label-free, CBPE) and measured accuracy of a model fall below the reference.

    Estimated accuracy of a window is the mean calibrated confidence; a drop
    alarms above both ``min_drop`` and ``z * sd * sqrt(1/window + 1/reference)``
    at false-positive rate ``step / ert``. With labels, a river ``label_detector``
    (one of ddm, eddm, hddm_a, hddm_w, adwin, page_hinkley) watches the error
    stream and a signal is confirmed when the accuracy of the last
    ``label_window`` labels is ``min_drop`` and a binomial ``z`` below the
    labelled baseline (reference labels, or the first ``min_labels`` after it).
    Tune per model with ``overrides={"model-id": {"min_drop": 0.1}}``.

    >>> from detectors.testing import feed
    >>> def ev(i, c):
    ...     return InferenceEvent(ts=i, model_id="m", request_id=str(i), principal="p",
    ...         features=[0.0], prediction=1, confidence=c + 0.1 * ((i * 7919) % 10) / 10)
    >>> det = PerformanceEstimateDetector(reference_size=1000, window=500, step=100)
    >>> feed(det, [ev(i, 0.85) for i in range(5000)])
    []
    >>> [(f.kind, f.evidence["estimated_accuracy"]) for f in
    ...  feed(det, [ev(i, 0.55) for i in range(5000, 6000)])]
    [('performance_drop', 0.835)]
    """

    name: ClassVar[str] = "performance.cbpe"
    overridable: ClassVar[tuple[str, ...]] = ("ert", "min_drop")
    needs_confidence: ClassVar[bool] = True

    def __init__(
        self,
        reference_size: int = 2000,
        window: int = 1000,
        step: int = 250,
        ert: float = 1e8,
        min_drop: float = 0.05,
        min_labels: int = 200,
        label_window: int = 500,
        label_detector: str = "ddm",
        sample_every: int = 1,
        max_models: int = 64,
        reference_path: str | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
    ) -> None:
        if label_detector not in STREAM_DRIFT_METHODS:
            raise ValueError(f"label_detector must be one of {STREAM_DRIFT_METHODS}")
        self.min_drop = min_drop
        self.min_labels = min_labels
        self.label_window = label_window
        self.label_detector = label_detector
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

    def prepare(self) -> None:
        # river's import (~0.4 s) at start, not at the first label in the loop.
        StreamDrift(self.label_detector)

    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        conf = np.array([e.confidence for e in events], dtype=float)
        right = np.full(len(events), -1, dtype=np.int8)
        for i, e in enumerate(events):  # labels are usually rare: test them cheaply first
            if e.label is not None:
                right[i] = correctness(e.label, e.prediction)
        ref: _PerformanceReference | None = st.ref
        if ref is None:
            return conf, right
        if (right >= 0).any():
            self._track_labels(st, ref, right[right >= 0])
        if ref.isotonic is not None:
            conf = apply_isotonic(ref.isotonic, conf)
        return conf, right

    def _track_labels(self, st: ModelState, ref: _PerformanceReference, right: np.ndarray) -> None:
        labels: _Labels | None = st.extra
        if labels is None:
            labels = st.extra = _Labels(self.label_detector, self.label_window)
            if ref.labelled >= self.min_labels:
                labels.base_n, labels.base_right = ref.labelled, round(ref.measured * ref.labelled)
        for value in right.tolist():
            if labels.base_n < self.min_labels:
                labels.base_n += 1
                labels.base_right += value
                continue
            labels.recent.append(value)
            labels.suspect -= 1
            if labels.detector.update(1 - value):
                labels.suspect = self.label_window
        # River flags the change at its first errors; the recent window needs a few
        # more labels to show the drop, so the signal stays open for label_window labels.
        if labels.suspect > 0 and labels.measured is None:
            labels.measured = self._confirm(st, labels)

    def _confirm(self, st: ModelState, labels: _Labels) -> dict[str, Any] | None:
        m = len(labels.recent)
        if m < 30:
            return None
        base = labels.base_right / labels.base_n
        recent = sum(labels.recent) / m
        z = normal_isf(alpha_per_evaluation(self.step, st.params["ert"]))
        se = np.sqrt(max(base * (1 - base), 1e-4) * (1 / m + 1 / labels.base_n))
        threshold = max(st.params["min_drop"], z * float(se))
        if base - recent < threshold:
            return None
        return {
            "measured_accuracy": round(recent, 4),
            "baseline_accuracy": round(base, 4),
            "threshold": round(threshold, 4),
            "labels_examined": m,
            "baseline_labels": labels.base_n,
            "stream_detector": labels.detector.method,
        }

    def fit_reference(self, st: ModelState, blocks: list[Block]) -> _PerformanceReference:
        conf = np.concatenate([b.data[0] for b in blocks])
        right = np.concatenate([b.data[1] for b in blocks])
        known = right >= 0
        ref = _PerformanceReference()
        ref.n = len(conf)
        ref.labelled = int(known.sum())
        ref.measured = float(right[known].mean()) if ref.labelled else float("nan")
        ref.calibrated = ref.labelled >= self.min_labels
        ref.isotonic = fit_isotonic(conf[known], right[known]) if ref.calibrated else None
        expected = conf if ref.isotonic is None else apply_isotonic(ref.isotonic, conf)
        ref.estimate = float(expected.mean())
        ref.sd = float(expected.std())
        alpha = alpha_per_evaluation(self.step, st.params["ert"])
        margin = mean_shift_margin(ref.sd, self.window_rows, ref.n, alpha)
        ref.threshold = max(st.params["min_drop"], margin)
        return ref

    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        ref: _PerformanceReference = st.ref
        expected = np.concatenate([b.data[0] for b in blocks])
        estimate = float(expected.mean())
        drop = ref.estimate - estimate
        labels: _Labels | None = st.extra
        measured = labels.measured if labels is not None else None
        if labels is not None:
            labels.measured = None
        if drop < ref.threshold and measured is None:
            return None

        def window_score(mask: np.ndarray) -> float:
            return (ref.estimate - float(expected[mask].mean())) / ref.threshold

        who = attribute(
            [p for b in blocks for p in b.principals],
            window_score,
            rank_by=np.maximum(ref.estimate - expected, 0.0),
        )
        if measured is not None:
            what = (
                f"measured accuracy {measured['measured_accuracy']:.2f} over the last "
                f"{measured['labels_examined']} labels, "
                f"down from {measured['baseline_accuracy']:.2f}"
            )
        else:
            what = f"estimated accuracy (no labels) {estimate:.2f}, down from {ref.estimate:.2f}"
        big = drop >= 2 * ref.threshold or measured is not None
        severity: Severity = "high" if big else "medium"
        return self.finding(
            st,
            kind="performance_drop",
            severity=severity,
            summary=(
                f"Model {st.model_id} (version {st.version or '-'}) performs worse: {what}, "
                f"{scope_phrase(who)}; review recent inputs and consider rollback or retraining."
            ),
            evidence={
                "statistic": "cbpe_accuracy",
                "estimated_accuracy": round(estimate, 4),
                "reference_estimated_accuracy": round(ref.estimate, 4),
                "drop": round(drop, 4),
                "threshold": round(ref.threshold, 4),
                "calibrated": ref.calibrated,
                "reference_labels": ref.labelled,
                "reference_measured_accuracy": None if not ref.labelled else round(ref.measured, 4),
                "measured": measured,
                "events_examined": len(expected),
                "attribution": who,
            },
            # A performance drop alone does not say who or how; no technique is implied.
            atlas=[],
            event=event,
            source=source,
        )
