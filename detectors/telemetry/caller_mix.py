"""The caller-mix test of feature drift: a window against its own callers' references.

A model's callers differ (their own segment, noise, a set of repeated
inputs), and which of them are active follows the clock (time zones, a
nightly batch): the window's caller mix moves every day though no caller's
inputs change. A window that drifts against the model's reference is then
also compared with the mix of its callers' own references
(:class:`~detectors.telemetry.feature_reference.CallerReference`), weighted by
their share of the window; callers without a complete own reference count
with the model's reference, so a new caller with odd inputs still drifts. The
threshold comes from the same false-alarm budget, for the mix's effective
sample size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as _st

from detectors.telemetry.feature_reference import FeatureReference
from detectors.telemetry.stats import psi
from detectors.telemetry.window import Block

__all__ = ["caller_mix_score"]


def caller_mix_score(
    ref: FeatureReference,
    blocks: list[Block],
    p_win: np.ndarray,
    mv_mean: float,
    *,
    own_rows: int,
    alpha: float,
    min_psi: float,
) -> dict[str, Any]:
    """Score (>= 1 drifts) of the window's bin shares ``p_win`` and mean reconstruction
    error ``mv_mean`` against the mix of its callers' references, with evidence.

    A caller counts with its own reference once that holds ``own_rows`` rows;
    ``alpha`` is the false-positive rate per evaluation and feature.
    """
    principals = [p for b in blocks for p in b.principals]
    n = len(principals)
    uniq, counts = np.unique(np.asarray(principals, dtype=object), return_counts=True)
    expected = np.zeros_like(ref.p_ref)
    inv_eff, unknown, err, judged_rows, own_callers = 0.0, 0.0, 0.0, 0, 0
    for who, k in zip(uniq.tolist(), counts.tolist(), strict=True):
        w = k / n
        own = ref.callers.get(who)
        if own is not None and own.rows >= own_rows:
            expected += w * own.counts / own.rows
            inv_eff += w * w / own.rows
            err += w * own.errors / own.rows
            judged_rows += k
            own_callers += 1
        else:
            unknown += w
    expected += unknown * ref.p_ref
    inv_eff += unknown * unknown / max(ref.n, 1)
    n_eff = max(int(1.0 / inv_eff), 1) if inv_eff > 0 else max(ref.n, 1)
    # PSI of two multinomial samples is asymptotically chi-square / (harmonic
    # size): the closed form, as a bootstrap per evaluation costs ~30 ms.
    bins = np.maximum((expected > 0).sum(axis=1) - 1, 1)
    null = (1.0 / n_eff + 1.0 / n) * _st.chi2.isf(alpha, bins)
    ratios = psi(expected, p_win) / np.maximum(min_psi, null)
    score = float(ratios.max()) if len(ratios) else 0.0
    if ref.basis is not None and ref.mv_mean > 0:
        err += unknown * ref.mv_mean
        score = max(score, mv_mean / (ref.mv_threshold * err / ref.mv_mean))
    return {
        "score": round(score, 3),
        "top_features": [ref.names[j] for j in np.argsort(-ratios)[:3].tolist()],
        "callers_with_own_reference": own_callers,
        "share_judged_against_own_reference": round(judged_rows / max(n, 1), 4),
        "reference_rows_effective": n_eff,
    }
