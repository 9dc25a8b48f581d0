"""What a feature drift finding says: the drifting features, who explains the drift, evidence.

Features are named, never their values. Attribution asks which callers'
traffic, taken out of the window, would leave it quiet
(:func:`~detectors.telemetry.features.attribute`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.telemetry.feature_reference import FeatureReference, bin_counts
from detectors.telemetry.features import attribute
from detectors.telemetry.stats import js_distance, psi
from detectors.telemetry.window import Block

__all__ = ["attribute_drift", "drift_evidence", "drift_what", "top_features"]


def attribute_drift(
    ref: FeatureReference,
    blocks: list[Block],
    drifting: np.ndarray,
    use_mv: bool,
    bins: int,
) -> dict[str, Any]:
    """Which callers explain the drift of the ``drifting`` features (and of the
    reconstruction error when ``use_mv``)."""
    codes = np.vstack([b.data[0] for b in blocks])
    errors = np.concatenate([b.data[2] for b in blocks]) if ref.basis is not None else None
    slots = bins + 1

    def window_score(mask: np.ndarray) -> float:
        rows = int(mask.sum())
        best = 0.0
        if len(drifting):
            sub = bin_counts(codes[mask][:, drifting], slots) / rows
            best = float((psi(ref.p_ref[drifting], sub) / ref.thresholds[drifting]).max())
        if use_mv and errors is not None:
            best = max(best, float(errors[mask].mean()) / ref.mv_threshold)
        return best

    return attribute([p for b in blocks for p in b.principals], window_score)


def top_features(
    ref: FeatureReference, psis: np.ndarray, ratios: np.ndarray, p_win: np.ndarray
) -> list[dict[str, Any]]:
    """The five features with the largest PSI-to-threshold ratios, with their statistics."""
    js = js_distance(ref.p_ref, p_win)
    return [
        {
            "feature": ref.names[j],
            "psi": round(float(psis[j]), 4),
            "js_distance": round(float(js[j]), 4),
            "threshold": round(float(ref.thresholds[j]), 4),
            "missing_share_reference": round(float(ref.p_ref[j, -1]), 4),
            "missing_share_window": round(float(p_win[j, -1]), 4),
        }
        for j in np.argsort(-ratios)[:5].tolist()
    ]


def drift_what(
    ref: FeatureReference, top: list[dict[str, Any]], drifting: int, mv_mean: float
) -> str:
    """The summary's account of what drifted."""
    if drifting:
        lead = top[0]
        return (
            f"{drifting} of {len(ref.names)} features drifted "
            f"(top {lead['feature']}: PSI {lead['psi']:.2f} > {lead['threshold']:.2f})"
        )
    return (
        f"the joint feature distribution drifted (reconstruction error "
        f"{mv_mean:.3g} > {ref.mv_threshold:.3g})"
    )


def drift_evidence(
    ref: FeatureReference,
    *,
    score: float,
    drifting: int,
    top: list[dict[str, Any]],
    mv_mean: float,
    min_psi: float,
    events: int,
    who: dict[str, Any],
    mix: dict[str, Any] | None,
) -> dict[str, Any]:
    """The evidence of a feature drift finding."""
    has_mv = ref.basis is not None
    return {
        "statistic": "psi",
        "score": round(score, 3),
        "features_examined": len(ref.names),
        "features_drifting": drifting,
        "top_features": top,
        "multivariate": {
            "statistic": "pca_reconstruction_error",
            "observed": round(mv_mean, 5) if has_mv else None,
            "reference": round(ref.mv_mean, 5) if has_mv else None,
            "threshold": round(ref.mv_threshold, 5) if has_mv else None,
        },
        "min_psi": min_psi,
        "events_examined": events,
        "type_errors_total": ref.schema.type_errors,
        "out_of_range_total": ref.schema.out_of_range,
        "attribution": who,
        "caller_mix": mix,
    }
