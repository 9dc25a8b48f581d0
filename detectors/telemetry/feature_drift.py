"""Input (feature) drift of a model against its reference.

Both compare the binned distribution of a sliding window with the reference by
the population stability index (PSI) on reference-quantile bins, one bin more
for missing values; Jensen-Shannon distance is reported alongside. A window
drifts when an effect is both statistically beyond the false-alarm budget and
at least a minimum size (``min_psi``): a p-value alone would flag every
feature of a large enough window.

The reference and its calibration are fitted in
:mod:`~detectors.telemetry.feature_reference`, the caller-mix test is
:mod:`~detectors.telemetry.caller_mix`, and a finding's evidence is built by
:mod:`~detectors.telemetry.drift_evidence`; this module holds the detector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Finding, Severity, Source
from detectors.telemetry.caller_mix import caller_mix_score
from detectors.telemetry.drift_evidence import (
    attribute_drift,
    drift_evidence,
    drift_what,
    top_features,
)
from detectors.telemetry.feature_reference import (
    FeatureReference,
    bin_counts,
    fit_feature_reference,
    reconstruction_errors,
)
from detectors.telemetry.features import FeatureSchema, scope_phrase
from detectors.telemetry.stats import alpha_per_evaluation, psi
from detectors.telemetry.window import (
    ATLAS_EVASION,
    Block,
    ModelState,
    WindowedModelDetector,
)

__all__ = ["FeatureDriftDetector", "reconstruction_errors"]


class FeatureDriftDetector(WindowedModelDetector):
    """Feature drift of a model: per-feature PSI plus a multivariate PCA signal.

    Per feature, PSI of the window against the reference on ``bins`` quantile
    bins (numeric) or the ``bins - 1`` most frequent categories plus "other"
    (string features), each with one more bin for missing values, so a feature
    that stops arriving drifts too. A feature drifts when its PSI exceeds both
    ``min_psi`` and its null threshold: a parametric bootstrap of the PSI of a
    stationary window, gamma tail at false-positive rate ``step / ert`` divided
    by the number of features. The multivariate signal is the mean PCA
    reconstruction error of standardised numeric features (NannyML's data
    reconstruction drift), which sees broken correlations that no single
    feature shows; it drifts above ``min_error_ratio`` times its reference mean
    and its null threshold. Findings name the top drifting features (never
    their values) and the callers whose traffic explains the drift.

    **Caller mix.** A model's callers differ (their own segment, noise, a set
    of repeated inputs), and which of them are active follows the clock (time
    zones, a nightly batch): the window's caller mix moves every day though no
    caller's inputs change. Each caller has its own reference: its rows in the
    model's reference and later ones, used once it holds ``caller_reference``
    rows; it grows (up to ``reference_size`` rows, then frozen) only from
    windows that did not drift, so a drift does not teach itself. A window that drifts against the
    model's reference is also compared with the mix of its own callers'
    references, weighted by their share of the window (callers without one
    count with the model's reference, so a new caller with odd inputs still
    drifts), with a threshold from the same false-alarm budget for the mix's
    sample size; the finding needs both. From the first day on, then, a caller
    is compared with itself once it has sent ``caller_reference`` rows; before,
    with the model's reference. ``caller_reference: 0`` turns this off.

    Tune per model with ``overrides={"model-id": {"min_psi": 0.2, "ert": 1e9}}``.

    >>> import random
    >>> from detectors.testing import feed
    >>> rng = random.Random(0)
    >>> def ev(i, shift=0.0):
    ...     return InferenceEvent(ts=i, model_id="m", request_id=str(i), principal="p",
    ...         features=[rng.gauss(shift, 1), rng.gauss(0, 1)], prediction=0)
    >>> det = FeatureDriftDetector(reference_size=1000, window=500, step=100)
    >>> feed(det, [ev(i) for i in range(6000)])
    []
    >>> [f.evidence["top_features"][0]["feature"] for f in
    ...  feed(det, [ev(i, shift=1.0) for i in range(6000, 7000)])]
    ['f0']
    """

    name: ClassVar[str] = "drift.features"
    overridable: ClassVar[tuple[str, ...]] = ("ert", "min_psi", "min_error_ratio")

    def __init__(
        self,
        reference_size: int = 2000,
        window: int = 1000,
        step: int = 250,
        ert: float = 1e8,
        bins: int = 10,
        min_psi: float = 0.1,
        min_error_ratio: float = 1.25,
        max_features: int = 256,
        sample_every: int = 1,
        max_models: int = 64,
        reference_path: str | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
        caller_reference: int = 50,
        max_callers: int = 2000,
    ) -> None:
        if bins < 2:
            raise ValueError("bins must be at least 2")
        if caller_reference < 0 or max_callers < 1:
            raise ValueError("caller_reference must be >= 0 and max_callers >= 1")
        self.caller_reference = caller_reference
        self.max_callers = max_callers
        self.bins = bins
        self.min_psi = min_psi
        self.min_error_ratio = min_error_ratio
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

    # -- blocks ----------------------------------------------------------------------

    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        rows = [e.features for e in events]
        ref: FeatureReference | None = st.ref
        if ref is None:
            if st.extra is None:
                st.extra = FeatureSchema.learn(rows, self.max_features)
            schema: FeatureSchema = st.extra
            return schema.numeric_matrix(rows), schema.categorical_columns(rows)
        x = ref.schema.numeric_matrix(rows)
        codes = ref.codes(x, ref.schema.categorical_columns(rows), self.bins)
        return codes, bin_counts(codes, self.bins + 1), ref.errors(x)

    def _alpha(self, st: ModelState, features: int) -> float:
        """False-positive rate per evaluation and feature."""
        return alpha_per_evaluation(self.step, st.params["ert"]) / max(features, 1)

    def fit_reference(self, st: ModelState, blocks: list[Block]) -> FeatureReference:
        schema: FeatureSchema = st.extra
        return fit_feature_reference(
            schema,
            blocks,
            bins=self.bins,
            window_rows=self.window_rows,
            alpha=self._alpha(st, len(schema.numeric) + len(schema.categorical)),
            min_psi=st.params["min_psi"],
            min_error_ratio=st.params["min_error_ratio"],
            rng=self.rng_for(st),
            caller_reference=self.caller_reference,
            max_callers=self.max_callers,
        )

    def stats(self) -> dict[str, float]:
        """Also the calibration sample sizes (of the model with the most): reference
        rows, callers with a complete own reference."""
        out = super().stats()
        refs = [st.ref for _, st in self.table.items() if isinstance(st.ref, FeatureReference)]
        out["calibration_reference_events"] = max((r.n for r in refs), default=0)
        out["calibration_callers_with_own_reference"] = max(
            (sum(1 for _, c in getattr(r, "callers", {}).items()
                 if c.rows >= self.caller_reference) for r in refs), default=0)
        return out

    # -- windows ---------------------------------------------------------------------

    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        ref: FeatureReference = st.ref
        if not ref.names:
            return None
        counts = sum(b.data[1] for b in blocks)
        n = int(counts[0].sum())
        p_win = counts / n
        psis = psi(ref.p_ref, p_win)
        ratios = psis / ref.thresholds
        mv_ratio, mv_mean = 0.0, float("nan")
        if ref.basis is not None:
            mv_mean = float(sum(b.data[2].sum() for b in blocks) / n)
            mv_ratio = mv_mean / ref.mv_threshold
        score = max(float(ratios.max()), mv_ratio)
        mix = None
        if score >= 1.0 and self.caller_reference:
            mix = caller_mix_score(ref, blocks, p_win, mv_mean, own_rows=self.caller_reference,
                                   alpha=self._alpha(st, len(ref.names)),
                                   min_psi=st.params["min_psi"])
        quiet = score < 1.0 or (mix is not None and mix["score"] < 1.0)
        if self.caller_reference:
            # The window's oldest block, judged for the last time (a block is never
            # judged against itself), teaches callers with fewer than
            # caller_reference rows; while the window is quiet, up to reference_size.
            oldest = blocks[0]
            ref.learn_callers(oldest.data[0], oldest.principals, oldest.data[2], bins=self.bins,
                              limit=self.reference_size if quiet else self.caller_reference)
        if quiet:
            return None
        drifting = np.flatnonzero(ratios >= 1.0)
        who = attribute_drift(ref, blocks, drifting, mv_ratio >= 1.0, self.bins)
        top = top_features(ref, psis, ratios, p_win)
        single = who["scope"] == "single_principal"
        severity: Severity = "high" if single or score >= 3.0 else "medium"
        what = drift_what(ref, top, len(drifting), mv_mean)
        return self.finding(
            st,
            kind="drift",
            severity=severity,
            summary=(
                f"Inputs of model {st.model_id} (version {st.version or '-'}): {what}, "
                f"{scope_phrase(who)}; check the upstream data and that caller's traffic."
            ),
            evidence=drift_evidence(ref, score=score, drifting=len(drifting), top=top,
                                    mv_mean=mv_mean, min_psi=st.params["min_psi"], events=n,
                                    who=who, mix=mix),
            atlas=ATLAS_EVASION if single else [],
            event=event,
            source=source,
        )
