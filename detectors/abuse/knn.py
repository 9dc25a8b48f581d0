"""``probing.stateful_knn``: runs of near-duplicate queries from one principal.

Boundary, HopSkipJump and NES-style attacks query the model many times with
near-identical inputs close to the decision boundary. Stateful kNN (Chen,
Carlini and Wagner 2020): per principal, the mean distance of each query to
its k nearest earlier queries of the same principal, measured in units of the
model's typical distance between two inputs; a run of unusually close queries
is an attack. Exact repeats of a query are not counted: an attack must change
its input, while retries and resubmissions of the same record are common and
harmless.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from detectors.abuse.calibration import (
    CountRule,
    TailCalibration,
    TailRule,
    calibration_evidence,
    calibration_stats,
)
from detectors.abuse.common import (
    ATLAS_PROBING,
    BatchedQueryDetector,
    Judgement,
    QueryState,
    by_model,
)
from detectors.abuse.space import stacked_sq_dists
from detectors.findings import Finding
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["StatefulKnnProbingDetector", "knn_mean_distances"]

_DUPLICATE = 1e-12  # squared distance below which two rows are the same query


def knn_mean_distances(batch: np.ndarray, buffer: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each batch row to its ``k`` nearest earlier rows.

    Earlier rows are the ``buffer`` and the batch rows before it; exact
    duplicates are ignored. NaN where fewer than ``k`` neighbours exist.
    Stacks work too: ``batch`` (m, n, d) and ``buffer`` (m, l, d), each slice
    computed as it would be alone.

    >>> b = np.array([[0.0], [1.0], [1.5]])
    >>> knn_mean_distances(b, np.array([[0.0], [3.0]]), k=2).round(2).tolist()
    [nan, 1.0, 1.0]
    """
    if batch.ndim == 2:
        out2: np.ndarray = knn_mean_distances(batch[None], buffer[None], k)[0]
        return out2
    pool = np.concatenate([buffer, batch], axis=1) if buffer.shape[1] else batch
    d = stacked_sq_dists(batch, pool)
    n = buffer.shape[1]
    bsz = batch.shape[1]
    later = np.arange(pool.shape[1])[None, :] >= (n + np.arange(bsz))[:, None]
    d[(later[None] | (d < _DUPLICATE))] = np.inf
    if k > d.shape[2]:
        return np.full(batch.shape[:2], np.nan)
    near = np.partition(d, k - 1, axis=2)[..., :k] if k < d.shape[2] else d
    out: np.ndarray = np.sqrt(near).mean(axis=2)
    out[~np.isfinite(out)] = np.nan
    return out


@state_type("abuse.knn_principal")
class _KnnState(QueryState):
    __slots__ = ("buffer", "flags", "judged", "level", "level_n")

    def __init__(self) -> None:
        super().__init__()
        self.buffer: np.ndarray = np.empty((0, 0), dtype=np.float32)
        self.flags = 0  # last `window` judged queries, 1 = suspiciously close
        self.judged = 0
        #: The principal's own typical ratio: running mean of the medians of its
        #: batches without a marked query (the last ~32 of them weigh).
        self.level = math.nan
        self.level_n = 0  # batches in ``level``


class StatefulKnnProbingDetector(BatchedQueryDetector):
    """Runs of near-duplicate queries from one principal (stateful kNN).

    Per (principal, model) the last ``buffer_size`` queries are kept
    (standardised, projected to ``max_dims`` float32 dims). Each new query's
    statistic is its mean distance to its ``k`` nearest buffered neighbours,
    divided by the model's median distance between two calibration inputs; a
    query is marked when the ratio is below a threshold, and a principal is
    reported when enough of its last ``window`` judged queries are marked.
    Cost per query is bounded by the buffer, never by history.

    Both numbers are calibrated per model (:mod:`detectors.abuse.calibration`):
    the ratios of the model's first ``calibration_queries`` queries judged
    against a full buffer (from at least ``calibration_principals``
    principals; with a partial buffer the ratios are larger, so the threshold
    is conservative for them) set the threshold at
    their ``quantile`` (0.1%, Chen et al.'s choice: about 0.1% of benign
    queries are marked by construction), and the count rule is the binomial
    critical count of ``window`` queries at that marking rate (upper 95%
    bound) and false-alarm probability ``alpha`` per window; the rule is
    recomputed from every following sample of the same size. Why: distances
    between natural inputs differ by model and data (a digits model's benign
    queries sit at 0.55-1.0 of its spread, a tabular model's elsewhere), so a
    fixed ratio is either blind or noisy somewhere; a stated false-alarm budget
    is not. Until a model is calibrated, the fixed ``distance_ratio`` and
    ``min_flagged`` apply (conservative values: attacks that begin before
    calibration, or models with too few callers to calibrate, are still seen).

    **Minimum effect size and self-baseline.** A population quantile alone
    marks the closest 0.1% of benign queries whatever their distance, and a
    lone heavy caller (or every caller after an upstream change) keeps
    producing them: natural queries sit at 0.5-1.0 of the model's typical
    ratio, iterative attacks at 0.02-0.06. So a query is marked only when its
    ratio is also below ``min_effect`` times a reference level: the median
    ratio of the model's calibration sample (the population's typical
    value), or the principal's own typical ratio if that is lower (the running
    mean of the medians of its unmarked batches, once it has
    ``self_batches`` of them): a caller is judged against its peers and
    against its own earlier behaviour. Batches with a marked query never
    enter the principal's level, so a probe cannot make itself the norm; a
    new account is judged against the population only.

    >>> import random
    >>> from detectors.events import InferenceEvent
    >>> from detectors.testing import feed
    >>> rng = random.Random(0)
    >>> def q(i, who, x):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...                           principal=who, features=x, prediction=0)
    >>> natural = [q(i, f"u{i % 5}", [rng.gauss(0, 1) for _ in range(8)]) for i in range(600)]
    >>> feed(StatefulKnnProbingDetector(), natural)
    []
    >>> x0 = [rng.gauss(0, 1) for _ in range(8)]
    >>> probe = [q(600 + i, "eve", [v + rng.gauss(0, 0.01) for v in x0]) for i in range(200)]
    >>> found = feed(StatefulKnnProbingDetector(), natural + probe)
    >>> [(f.entity.id, f.evidence["queries_examined"]) for f in found]
    [('eve', 64)]
    """

    name: ClassVar[str] = "probing.stateful_knn"
    state_fields: ClassVar[tuple[str, ...]] = ("calibrations", "table", "spaces")
    kind: ClassVar[str] = "adversarial_probing"
    atlas: ClassVar[list[str]] = ATLAS_PROBING
    skip_repeats: ClassVar[bool] = True
    robust_space: ClassVar[bool] = True

    def __init__(
        self,
        k: int = 20,
        buffer_size: int = 128,
        distance_ratio: float = 0.1,
        window: int = 50,
        min_flagged: int = 20,
        quantile: float = 0.001,
        alpha: float = 1e-6,
        calibration_queries: int = 500,
        calibration_principals: int = 10,
        min_effect: float = 0.2,
        self_batches: int = 4,
        batch_size: int = 32,
        cooldown_seconds: float = 3600.0,
        calibration_rows: int = 256,
        max_dims: int = 32,
        max_principals: int = 20_000,
        seed: int = 0,
    ) -> None:
        if not 1 <= k < buffer_size or not 1 <= min_flagged <= window:
            raise ValueError("need 1 <= k < buffer_size and 1 <= min_flagged <= window")
        if not 0 < min_effect <= 1 or self_batches < 0:
            raise ValueError("min_effect in (0, 1], self_batches >= 0")
        self.count_rule = CountRule(
            threshold=distance_ratio, min_flagged=min_flagged, window=window, quantile=quantile,
            alpha=alpha, queries=calibration_queries, principals=calibration_principals, low=True,
        )
        self.min_effect = min_effect
        self.self_batches = self_batches
        self.k = k
        self.buffer_size = buffer_size
        self.window = window
        self.calibrations: EntityTable[TailCalibration] = EntityTable(1024)
        self._setup(
            batch_size=batch_size,
            cooldown_seconds=cooldown_seconds,
            max_principals=max_principals,
            calibration_rows=calibration_rows,
            max_dims=max_dims,
            seed=seed,
        )

    def new_state(self) -> QueryState:
        return _KnnState()

    def judge_run(self, run: list[Judgement]) -> list[list[Finding] | None]:
        out: list[list[Finding] | None] = [None] * len(run)
        for at in by_model(run):
            space = run[at[0]].space
            x = space.embed_stack([r for i in at for r in run[i].rows], self.batch_size)
            # Stack the batches whose buffers have the same length (most are full).
            same: dict[int, list[int]] = {}
            by_block: dict[int, tuple[np.ndarray, int]] = {}
            for b, i in enumerate(at):
                buf = run[i].st.buffer  # type: ignore[attr-defined]
                same.setdefault(len(buf) if buf.shape[1:] == x.shape[2:] else 0, []).append(b)
            for length, blocks in same.items():
                xs = x[blocks]
                bufs = (
                    np.stack([run[at[b]].st.buffer for b in blocks])  # type: ignore[attr-defined]
                    if length
                    else xs[:, :0]
                )
                ratios = knn_mean_distances(xs, bufs, self.k) / space.spread
                pools = np.concatenate([bufs, xs], axis=1)[:, -self.buffer_size :]
                for n, b in enumerate(blocks):
                    run[at[b]].st.buffer = pools[n].copy()  # type: ignore[attr-defined]
                    by_block[b] = ratios[n], length
            # The model's calibration is shared by its principals: judge in run order.
            cal = self.calibrations.touch(run[at[0]].event.model_id, TailCalibration)
            for b, i in enumerate(at):
                out[i] = self._judged_batch(run[i], *by_block[b], cal)
        return out

    def _judged_batch(
        self, j: Judgement, ratios: np.ndarray, filled: int, cal: TailCalibration
    ) -> list[Finding] | None:
        """Mark and count the batch's queries; ``filled``: its buffer's length before it."""
        st, space, event, source = j.st, j.space, j.event, j.source
        assert isinstance(st, _KnnState)
        st.examined += len(ratios)
        rule = cal.rule
        limit, need = self.count_rule.current(cal)
        typical, own = self._levels(rule, st)
        if not math.isnan(typical):  # the minimum effect size (see the class doc)
            limit = min(limit, self.min_effect * min(typical, own))
        flags, mask = st.flags, (1 << self.window) - 1
        judged = ratios[~np.isnan(ratios)]  # NaN: too few neighbours to judge
        marked = 0
        for r in judged.tolist():
            close = r < limit
            marked += close
            flags = ((flags << 1) | close) & mask
        st.judged += len(judged)
        st.flags = flags
        if not marked and len(judged) >= 8:  # an unmarked batch: the principal's own level
            n = getattr(st, "level_n", 0) + 1
            level = getattr(st, "level", math.nan)
            batch = float(np.median(judged))
            st.level = batch if n == 1 else level + (batch - level) / min(n, 32)
            st.level_n = n
        # Calibrate on queries judged against a full buffer: with fewer earlier
        # queries the nearest ones are farther, so the threshold that marks q of
        # those marks fewer of the rest (conservative), not more.
        full = ratios[max(self.buffer_size - filled, 0) :]
        full = full[~np.isnan(full)]
        if full.size:
            self.count_rule.learn(cal, event.principal, full.tolist())
        flagged = flags.bit_count()
        if flagged < need or st.cooling_down(event.ts):  # type: ignore[arg-type]
            return None
        median = float(np.median(judged)) if judged.size else None
        return self.finding(
            st,
            event,
            source,
            severity="high" if flagged >= 2 * need else "medium",
            summary=(
                f"Principal sent {flagged} of its last {min(st.judged, self.window)} queries "
                f"within {limit:.3g}x the model's typical input distance of its "
                f"own earlier queries: an iterative black-box attack is likely; review and "
                f"throttle this caller."
            ),
            evidence={
                "statistic": "mean distance to k nearest earlier queries / model spread",
                "observed_median_ratio": median,
                "threshold_ratio": round(limit, 6),
                "typical_ratio": None if math.isnan(typical) else round(typical, 6),
                "own_typical_ratio": None if math.isinf(own) else round(own, 6),
                "min_effect": self.min_effect,
                "flagged_queries": flagged,
                "window_queries": min(st.judged, self.window),
                "min_flagged": need,
                **calibration_evidence(rule),
                "k": self.k,
                "queries_examined": st.examined,
                "model_spread": round(space.spread, 6),
            },
        )


    def _levels(self, rule: TailRule | None, st: _KnnState) -> tuple[float, float]:
        """(the model's typical ratio, the principal's own: inf until it has
        ``self_batches`` unmarked batches); NaN typical before calibration."""
        typical = getattr(rule, "median", math.nan) if rule is not None else math.nan
        own = math.inf
        if self.self_batches and getattr(st, "level_n", 0) >= self.self_batches:
            own = st.level
        return typical, own

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out.update(calibration_stats(c.rule for _, c in self.calibrations.items()))
        return out
