"""Input integrity: a rise in the share of inputs an outlier model finds unlike the reference.

"Autoencoders or other classifiers can be used to monitor the integrity of the
input data": a pyod outlier model is fitted on the reference inputs of each
model, its outlier cut calibrated on held-out reference rows, and every block
of incoming inputs is scored in one batch. Tampered, corrupted or crafted
inputs raise the share of outlying rows long before they shift whole feature
distributions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from detectors.binomial import binomial_critical
from detectors.events import InferenceEvent
from detectors.findings import Finding, Severity, Source
from detectors.state_codec import state_type
from detectors.telemetry.adapters import OUTLIER_METHODS, OutlierModel, warm_up
from detectors.telemetry.features import FeatureSchema, attribute, scope_phrase
from detectors.telemetry.stats import alpha_per_evaluation
from detectors.telemetry.window import (
    ATLAS_EVASION,
    Block,
    ModelState,
    WindowedModelDetector,
)

__all__ = ["InputIntegrityDetector"]


@state_type("telemetry.integrity_reference")
class _IntegrityReference:
    __slots__ = ("fill", "fitted_at", "limits", "model", "null_rate", "schema")
    fill: np.ndarray
    fitted_at: int
    limits: dict[int, int]
    model: OutlierModel | None
    null_rate: float
    schema: FeatureSchema


@state_type("telemetry.integrity_recent")
class _Recent:
    """Recent inputs from quiet windows, for the scheduled refit (bounded rows)."""

    __slots__ = ("blocks", "rows")

    def __init__(self) -> None:
        self.blocks: deque[np.ndarray] = deque()
        self.rows = 0


class InputIntegrityDetector(WindowedModelDetector):
    """Share of outlying inputs in a window far above the reference share.

    The outlier model (``method``: pyod ``hbos`` by default, ``ecod`` or
    ``iforest``) is fitted on half of the reference numeric features (missing
    values filled with the reference median; string features are not scored,
    ``drift.features`` covers them) and its cut is the ``1 - contamination``
    quantile of the other half's scores. A window alarms when its count of
    outlying rows exceeds both the binomial ``(1 - step/ert)`` quantile at the
    reference rate and ``min_ratio`` times that rate. Every ``refit_every``
    events (0: never) the model is refitted on the latest ``reference_size``
    inputs of windows that did not alarm, so slow benign change is followed
    while an attack in progress is not learnt. HBOS is the default because
    it scores a 1000-row batch in about 0.5 ms where ECOD takes about 5 ms
    (pyod's HBOS is compiled by numba on its first fit in a process, which
    takes seconds once). Batches are ``step`` rows, so the default step is
    larger here than in the other telemetry detectors.

    >>> import random
    >>> from detectors.testing import feed
    >>> rng = random.Random(0)
    >>> def ev(i, who="p", odd=False):
    ...     x = [rng.gauss(0, 1) for _ in range(3)]
    ...     return InferenceEvent(ts=i, model_id="m", request_id=str(i), principal=who,
    ...         features=[v * 8 + 20 for v in x] if odd else x, prediction=0)
    >>> det = InputIntegrityDetector(reference_size=2000, window=1000, step=500)
    >>> feed(det, [ev(i, who=f"u{i % 7}") for i in range(20000)])
    []
    >>> found = feed(det, [ev(i, who=f"u{i % 7}", odd=i % 10 == 0) for i in range(20000, 22000)])
    >>> [(f.kind, f.evidence["attribution"]["scope"]) for f in found]
    [('input_integrity', 'population')]
    """

    name: ClassVar[str] = "integrity.outliers"
    overridable: ClassVar[tuple[str, ...]] = ("ert", "min_ratio")

    def __init__(
        self,
        reference_size: int = 2000,
        window: int = 2000,
        step: int = 1000,
        ert: float = 1e8,
        method: str = "hbos",
        contamination: float = 0.02,
        min_ratio: float = 3.0,
        refit_every: int = 100_000,
        max_features: int = 256,
        sample_every: int = 1,
        max_models: int = 64,
        reference_path: str | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
    ) -> None:
        if method not in OUTLIER_METHODS:
            raise ValueError(f"method must be one of {OUTLIER_METHODS}")
        if not 0 < contamination < 0.5 or min_ratio < 1:
            raise ValueError("contamination must be in (0, 0.5) and min_ratio >= 1")
        self.method = method
        self.contamination = contamination
        self.min_ratio = min_ratio
        self.refit_every = refit_every
        self.max_features = max_features
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
        warm_up(self.method)  # first-use costs at start, not in the consumer loop

    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        rows = [e.features for e in events]
        ref: _IntegrityReference | None = st.ref
        if ref is None:
            if st.extra is None:
                st.extra = FeatureSchema.learn(rows, self.max_features)
            return st.extra.numeric_matrix(rows)
        x = ref.schema.numeric_matrix(rows)
        x = np.where(np.isnan(x), ref.fill, x)
        if ref.model is None:
            return np.zeros(len(x), dtype=bool), x
        return ref.model.outlying(x), x

    def _fit(self, st: ModelState, schema: FeatureSchema, x: np.ndarray) -> _IntegrityReference:
        ref = _IntegrityReference()
        ref.schema = schema
        ref.fill = np.nan_to_num(np.nanmedian(x, axis=0)) if x.size else np.zeros(x.shape[1])
        ref.fitted_at = st.seen
        ref.model = None
        ref.null_rate = self.contamination
        ref.limits = {}
        if x.shape[1] >= 1 and len(x) >= 40:
            x = np.where(np.isnan(x), ref.fill, x)
            ref.model = OutlierModel(self.method, self.contamination, self.seed).fit(
                x, self.rng_for(st)
            )
            ref.null_rate = max(ref.model.null_rate, self.contamination)
        return ref

    def fit_reference(self, st: ModelState, blocks: list[Block]) -> _IntegrityReference:
        schema: FeatureSchema = st.extra
        x = np.vstack([b.data for b in blocks])
        ref = self._fit(st, schema, x)
        st.extra = _Recent()  # only once the fit succeeded: a failed one changes nothing
        return ref

    def _keep_recent(self, st: ModelState, x: np.ndarray) -> None:
        recent: _Recent = st.extra
        recent.blocks.append(x.astype(np.float32))
        recent.rows += len(x)
        while recent.rows - len(recent.blocks[0]) >= self.reference_size:
            recent.rows -= len(recent.blocks.popleft())

    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        ref: _IntegrityReference = st.ref
        if ref.model is None:
            return None
        flags = np.concatenate([b.data[0] for b in blocks])
        n, count = len(flags), int(flags.sum())
        limit = ref.limits.get(n)
        if limit is None:  # scipy's binomial quantile is slow; n is almost always window
            alpha = alpha_per_evaluation(self.step, st.params["ert"])
            limit = ref.limits[n] = max(
                binomial_critical(n, ref.null_rate, alpha),
                math.ceil(st.params["min_ratio"] * ref.null_rate * n),
            )
        if count < limit:
            if not st.incident:
                self._keep_recent(st, blocks[-1].data[1])
            self._maybe_refit(st)
            return None
        rate_limit = limit / n

        def window_score(mask: np.ndarray) -> float:
            return float(flags[mask].mean()) / rate_limit

        who = attribute(
            [p for b in blocks for p in b.principals], window_score, rank_by=flags.astype(float)
        )
        share = count / n
        single = who["scope"] == "single_principal"
        severity: Severity = "high" if single or share >= 3 * rate_limit else "medium"
        return self.finding(
            st,
            kind="input_integrity",
            severity=severity,
            summary=(
                f"{share:.1%} of inputs to model {st.model_id} (version {st.version or '-'}) "
                f"are outliers against its reference (usual {ref.null_rate:.1%}, threshold "
                f"{rate_limit:.1%}), {scope_phrase(who)}; inspect the sender for tampered or "
                f"crafted input."
            ),
            evidence={
                "statistic": "outlier_share",
                "observed_share": round(share, 4),
                "outliers": count,
                "reference_share": round(ref.null_rate, 4),
                "threshold_share": round(rate_limit, 4),
                "outlier_model": self.method,
                "features_scored": len(ref.schema.numeric),
                "model_fitted_at_event": ref.fitted_at,
                "events_examined": n,
                "attribution": who,
            },
            atlas=ATLAS_EVASION,
            event=event,
            source=source,
        )

    def _maybe_refit(self, st: ModelState) -> None:
        ref: _IntegrityReference = st.ref
        recent: _Recent = st.extra
        due = self.refit_every and st.seen - ref.fitted_at >= self.refit_every
        if due and recent.rows >= self.reference_size:
            x = np.vstack(list(recent.blocks)).astype(float)[-self.reference_size :]
            try:
                st.ref = self._fit(st, ref.schema, x)
            except Exception:
                # The old model stays; the next refit learns from new rows, not these.
                recent.blocks.clear()
                recent.rows = 0
                raise
