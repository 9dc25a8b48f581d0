"""Confidence drop: the model answers its callers with less certainty than it used to.

A model fed inputs it was not trained for (drifted, corrupted or crafted near
its decision boundary) usually grows less sure of its answers before anyone has
labels to measure accuracy: "drops in model performance and confidence over
time, given consistent input".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Finding, Severity, Source
from detectors.state_codec import state_type
from detectors.telemetry.features import attribute, scope_phrase
from detectors.telemetry.stats import alpha_per_evaluation, margin_entropy, mean_shift_margin
from detectors.telemetry.window import (
    ATLAS_EVASION,
    Block,
    ModelState,
    WindowedModelDetector,
)

__all__ = ["ConfidenceDropDetector", "probability_summary"]


#: Margin and entropy are evidence only: computed on one event in this many.
PROBABILITY_SAMPLE = 8


def probability_summary(rows: list[Any]) -> tuple[float, float, int]:
    """Sums of top-2 margin and entropy over the rows with class probabilities, and their count.

    Rows are the events' ``probabilities`` (list, dict or None); rows of a length
    different from the first are skipped rather than padded.
    """
    lists = [list(p.values()) if type(p) is dict else p for p in rows if p]
    if not lists:
        return 0.0, 0.0, 0
    width = len(lists[0])
    same = [p for p in lists if len(p) == width]
    probs = np.asarray(same, dtype=float)
    margin, entropy = margin_entropy(probs)
    return float(margin.sum()), float(entropy.sum()), len(same)


@state_type("telemetry.confidence_reference")
class _ConfidenceReference:
    __slots__ = ("entropy", "low_cut", "low_share", "margin", "mean", "n", "sd", "threshold")
    entropy: float | None
    low_cut: float
    low_share: float
    margin: float | None
    mean: float
    n: int
    sd: float
    threshold: float


class ConfidenceDropDetector(WindowedModelDetector):
    """Mean confidence of a model's answers falls below its reference.

    Confidence is the event's ``confidence`` (the top class probability when
    only ``probabilities`` are given); events with neither are skipped. The
    window mean is compared with the reference mean: a drop alarms when it
    exceeds both ``min_drop`` (absolute, the effect size) and
    ``z * sd * sqrt(1/window + 1/reference)`` with ``z`` at false-positive rate
    ``step / ert``. Evidence adds the top-2 margin and entropy (when
    probabilities are sent; from one event in ``PROBABILITY_SAMPLE``), the
    share of answers below the reference's 5 % confidence quantile and the
    callers whose traffic explains the drop.
    Tune per model with ``overrides={"model-id": {"min_drop": 0.1}}``.

    >>> from detectors.testing import feed
    >>> def ev(i, c):
    ...     return InferenceEvent(ts=i, model_id="m", request_id=str(i), principal="p",
    ...         features=[0.0], prediction=1, confidence=c + 0.1 * ((i * 7919) % 10) / 10)
    >>> det = ConfidenceDropDetector(reference_size=1000, window=500, step=100)
    >>> feed(det, [ev(i, 0.85) for i in range(5000)])
    []
    >>> [(f.kind, f.evidence["events_seen"] - 5000, f.evidence["drop"]) for f in
    ...  feed(det, [ev(i, 0.6) for i in range(5000, 6000)])]   # found 100 events in
    [('confidence_drop', 100, 0.05)]
    """

    name: ClassVar[str] = "confidence.drop"
    overridable: ClassVar[tuple[str, ...]] = ("ert", "min_drop")
    needs_confidence: ClassVar[bool] = True

    def __init__(
        self,
        reference_size: int = 2000,
        window: int = 1000,
        step: int = 250,
        ert: float = 1e8,
        min_drop: float = 0.05,
        sample_every: int = 1,
        max_models: int = 64,
        reference_path: str | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
    ) -> None:
        self.min_drop = min_drop
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

    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        conf = np.array([e.confidence for e in events], dtype=float)
        sample = events[::PROBABILITY_SAMPLE]
        return (conf, *probability_summary([e.probabilities for e in sample]))

    def fit_reference(self, st: ModelState, blocks: list[Block]) -> _ConfidenceReference:
        conf = np.concatenate([b.data[0] for b in blocks])
        n_probs = sum(b.data[3] for b in blocks)
        ref = _ConfidenceReference()
        ref.n = len(conf)
        ref.mean = float(conf.mean())
        ref.sd = float(conf.std())
        ref.low_cut = float(np.quantile(conf, 0.05))
        ref.low_share = float(np.mean(conf < ref.low_cut))
        ref.margin = sum(b.data[1] for b in blocks) / n_probs if n_probs else None
        ref.entropy = sum(b.data[2] for b in blocks) / n_probs if n_probs else None
        alpha = alpha_per_evaluation(self.step, st.params["ert"])
        margin = mean_shift_margin(ref.sd, self.window_rows, ref.n, alpha)
        ref.threshold = max(st.params["min_drop"], margin)
        return ref

    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        ref: _ConfidenceReference = st.ref
        conf = np.concatenate([b.data[0] for b in blocks])
        mean = float(conf.mean())
        drop = ref.mean - mean
        if drop < ref.threshold:
            return None

        def window_score(mask: np.ndarray) -> float:
            return (ref.mean - float(conf[mask].mean())) / ref.threshold

        who = attribute(
            [p for b in blocks for p in b.principals],
            window_score,
            rank_by=np.maximum(ref.mean - conf, 0.0),
        )
        n_probs = sum(b.data[3] for b in blocks)
        single = who["scope"] == "single_principal"
        severity: Severity = "high" if single or drop >= 2 * ref.threshold else "medium"
        return self.finding(
            st,
            kind="confidence_drop",
            severity=severity,
            summary=(
                f"Model {st.model_id} (version {st.version or '-'}) answers with mean "
                f"confidence {mean:.2f}, down from {ref.mean:.2f} (threshold drop "
                f"{ref.threshold:.2f}), {scope_phrase(who)}; check its inputs."
            ),
            evidence={
                "statistic": "mean_confidence",
                "observed_mean": round(mean, 4),
                "reference_mean": round(ref.mean, 4),
                "drop": round(drop, 4),
                "threshold": round(ref.threshold, 4),
                "low_confidence_share": round(float(np.mean(conf < ref.low_cut)), 4),
                "low_confidence_share_reference": round(ref.low_share, 4),
                "mean_margin": round(sum(b.data[1] for b in blocks) / n_probs, 4)
                if n_probs
                else None,
                "reference_margin": None if ref.margin is None else round(ref.margin, 4),
                "mean_entropy": round(sum(b.data[2] for b in blocks) / n_probs, 4)
                if n_probs
                else None,
                "reference_entropy": None if ref.entropy is None else round(ref.entropy, 4),
                "events_examined": len(conf),
                "attribution": who,
            },
            atlas=ATLAS_EVASION if single else [],
            event=event,
            source=source,
        )
