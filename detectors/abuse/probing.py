"""Adversarial probing: iterative black-box attacks seen in the query stream.

Boundary, HopSkipJump and NES-style attacks query the model many times with
near-identical inputs close to the decision boundary. Three signals:

- :class:`StatefulKnnProbingDetector` (Chen, Carlini and Wagner 2020): per
  principal, the mean distance of each query to its k nearest earlier queries
  of the same principal, measured in units of the model's typical distance
  between two inputs; a run of unusually close queries is an attack.
- :class:`BlacklightProbingDetector` (Li et al. 2022): quantised-query
  fingerprints in an inverted index shared by all principals of a model, so
  near-duplicates are found across accounts (Sybil attacks) at constant cost.
- :class:`LowConfidenceProbingDetector`: the share of a principal's queries
  that the model answers with low confidence, against the model's baseline
  share (a binomial test with a false-alarm budget).

Exact repeats of a query are not counted as probing by the two distance
detectors: an attack must change its input, while retries and resubmissions of
the same record are common and harmless.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from detectors.abuse.calibration import (
    TailCalibration,
    TailRule,
    binomial_critical,
    check_calibration,
)
from detectors.abuse.common import (
    ATLAS_PROBING,
    BatchedQueryDetector,
    Judgement,
    QueryState,
    by_model,
)
from detectors.abuse.space import stacked_sq_dists
from detectors.base import Detector
from detectors.events import Event, InferenceEvent
from detectors.findings import Entity, Finding, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = [
    "BlacklightProbingDetector",
    "LowConfidenceProbingDetector",
    "StatefulKnnProbingDetector",
    "binomial_critical_count",
    "blacklight_fingerprints",
    "knn_mean_distances",
    "latest_holders",
    "most_common_per_row",
]

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
        check_calibration(quantile, alpha, calibration_principals)
        self.min_effect = min_effect
        self.self_batches = self_batches
        self.k = k
        self.buffer_size = buffer_size
        self.distance_ratio = distance_ratio
        self.window = window
        self.min_flagged = min_flagged
        self.quantile = quantile
        self.alpha = alpha
        self.calibration_queries = calibration_queries
        self.calibration_principals = calibration_principals
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
        limit, need = (
            (rule.threshold, rule.min_flagged)
            if rule is not None
            else (self.distance_ratio, self.min_flagged)
        )
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
        if full.size and cal.add(
            event.principal,
            full.tolist(),
            target=self.calibration_queries,
            min_principals=self.calibration_principals,
        ):
            cal.finish(q=self.quantile, alpha=self.alpha, window=self.window, low=True)
        flagged = flags.bit_count()
        if flagged < need or self.quiet(st, event.ts):  # type: ignore[arg-type]
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
                **_calibration_evidence(rule),
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


def _calibration_evidence(rule: TailRule | None) -> dict[str, Any]:
    """How the thresholds of a finding were set (calibrated per model, or not yet)."""
    if rule is None:
        return {"calibrated": False}
    return {
        "calibrated": True,
        "benign_mark_rate_bound": round(rule.p0, 6),
        "calibration_queries": rule.queries,
        "calibration_principals": rule.principals,
    }


def blacklight_fingerprints(
    quantised: np.ndarray, window: int, top_n: int, multipliers: np.ndarray
) -> np.ndarray:
    """Blacklight fingerprints: the ``top_n`` largest hashes of sliding windows.

    ``quantised`` is an int64 matrix (one query per row). Each window of
    ``window`` consecutive values is hashed (a multiply-add hash over int64,
    wrapping); a row's fingerprint is its ``top_n`` largest window hashes
    (fewer when the row has fewer windows), as in Li et al. 2022.

    >>> q = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], dtype=np.int64)
    >>> m = np.array([3, 5, 7], dtype=np.int64)
    >>> fp = blacklight_fingerprints(q, 3, 2, m)
    >>> len(set(fp[0]) & set(fp[1]))   # windows (1,2,3) and (2,3,4) are shared
    2
    """
    w = min(window, quantised.shape[1])
    span = quantised.shape[1] - w + 1
    with np.errstate(over="ignore"):
        # sum_j q[:, i + j] * m[j] for every window start i: w shifted slices
        # instead of a (rows, windows, w) view, fewer and smaller temporaries.
        hashes = quantised[:, :span] * multipliers[0]
        for j in range(1, w):
            hashes += quantised[:, j : j + span] * multipliers[j]
        hashes ^= hashes >> 29
        hashes *= np.int64(-4658895280553007687)
        hashes ^= hashes >> 32
    n = min(top_n, hashes.shape[1])
    if n < hashes.shape[1]:
        hashes = np.partition(hashes, hashes.shape[1] - n, axis=1)[:, -n:]
    result: np.ndarray = hashes
    return result


@state_type("abuse.blacklight_index")
class _BlacklightIndex:
    """Inverted index hash -> latest query id as a fixed-size numpy hash table.

    Open addressing without probing: a hash lands in slot ``hash % size`` and
    overwrites whatever was there, so the table is a bounded, lossy "who had
    this hash most recently" map. Look-ups and inserts of a whole batch are two
    numpy gathers and scatters, so the cost per query does not depend on the
    history. Query ids map to (principal, digest) through a ring of
    ``owners_size`` entries.
    """

    __slots__ = ("digests", "filled", "keys", "next_id", "owners", "qids")

    owners_size: ClassVar[int] = 1 << 16

    def __init__(self, max_size: int) -> None:
        size = 1 << max(int(max_size - 1).bit_length(), 4)
        self.keys = np.zeros(size, dtype=np.int64)  # 0 = empty (real hashes are odd)
        self.qids = np.zeros(size, dtype=np.int64)
        self.owners: list[str | None] = [None] * self.owners_size
        self.digests = np.zeros(self.owners_size, dtype=np.int64)
        self.next_id = 1
        self.filled = 0

    def lookup(self, fps: np.ndarray) -> np.ndarray:
        """Earlier query id holding each hash of ``fps`` (0 where none)."""
        pos = fps & (len(self.keys) - 1)
        return np.where((self.keys[pos] == fps) & (fps != 0), self.qids[pos], 0)

    def add(self, fps: np.ndarray) -> int:
        """Insert a batch of fingerprints (ids from ``next_id`` on); see :meth:`own`."""
        base = self.next_id
        ids = np.arange(base, base + len(fps), dtype=np.int64)
        valid = fps != 0
        pos = (fps & (len(self.keys) - 1))[valid]
        self.filled += int((self.keys[pos] == 0).sum())
        self.keys[pos] = fps[valid]
        self.qids[pos] = np.broadcast_to(ids[:, None], fps.shape)[valid]
        self.next_id += len(fps)
        return base

    def own(self, base: int, principals: list[str], digests: np.ndarray) -> None:
        """Record the owners and digests of the queries ``base``, ``base + 1``, ..."""
        ring = np.arange(base, base + len(principals), dtype=np.int64) % self.owners_size
        self.digests[ring] = digests
        owners = self.owners
        for r, who in zip(ring.tolist(), principals, strict=True):
            owners[r] = who

    def owner(self, qid: int, next_id: int | None = None) -> tuple[str | None, int]:
        """Principal and digest of query ``qid``, as of when ``next_id`` was next."""
        if qid <= (self.next_id if next_id is None else next_id) - self.owners_size:
            return None, 0  # too old: its owner slot was reused
        r = qid % self.owners_size
        return self.owners[r], int(self.digests[r])


def latest_holders(fps: np.ndarray, earlier: np.ndarray, base: int) -> np.ndarray:
    """For each hash of a batch, the latest earlier query holding it (0: none).

    ``earlier`` holds the index's answer (queries of earlier batches); a hash
    also present in an earlier row j of this batch is held by ``base + j``.

    >>> fps = np.array([[3, 5], [5, 7], [5, 0]])
    >>> latest_holders(fps, np.zeros((3, 2), dtype=np.int64), 10).tolist()
    [[0, 0], [10, 0], [11, 0]]
    """
    rows, width = fps.shape
    flat = fps.ravel()
    order = np.argsort(flat, kind="stable")  # equal hashes grouped, earlier rows first
    ordered = flat[order]
    repeat = np.zeros(len(flat), dtype=bool)
    repeat[1:] = (ordered[1:] == ordered[:-1]) & (ordered[1:] != 0)
    inbatch = np.zeros(len(flat), dtype=np.int64)
    inbatch[order[1:][repeat[1:]]] = base + order[:-1][repeat[1:]] // width
    holders = inbatch.reshape(rows, width)
    return np.where(holders != 0, holders, earlier)


def most_common_per_row(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the most frequent non-zero value and its count (0, 0 if none).

    >>> v, n = most_common_per_row(np.array([[4, 0, 4, 2], [0, 0, 0, 0]]))
    >>> v.tolist(), n.tolist()
    ([4, 0], [2, 0])
    """
    s = np.sort(values, axis=1)
    width = s.shape[1]
    at = np.arange(width)
    start = np.ones(s.shape, dtype=bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    run_start = np.maximum.accumulate(np.where(start, at, 0), axis=1)
    run_len = np.where(s != 0, at - run_start + 1, 0)
    best = run_len.argmax(axis=1)
    rows = np.arange(len(s))
    return s[rows, best], run_len[rows, best]


def _dedupe_rows(fps: np.ndarray) -> np.ndarray:
    """Each row sorted, repeated values set to 0 (no hash); real hashes made odd."""
    fps = np.sort(fps | 1, axis=1)
    fps[:, 1:][fps[:, 1:] == fps[:, :-1]] = 0
    return fps


@state_type("abuse.blacklight_principal")
class _BlacklightState(QueryState):
    __slots__ = ("flags", "partners")

    def __init__(self) -> None:
        super().__init__()
        self.flags = 0
        self.partners: dict[str, int] = {}  # other principals whose queries matched


class BlacklightProbingDetector(BatchedQueryDetector):
    """Query fingerprints shared with earlier queries, across principals (Blacklight).

    Each query is standardised, quantised (``round(x / quantum)``), hashed over
    sliding windows of ``hash_window`` values and fingerprinted by its
    ``top_n`` largest hashes. An inverted index per model (hash -> latest
    query, a fixed table of at least ``max_index`` slots where a new hash
    overwrites the slot's old one) finds the earlier query sharing the most
    hashes. The statistic is the share of the query's fingerprint that query
    holds (0 for an exact repeat); a query is marked when the share reaches a
    threshold, and a principal is reported when enough of its last ``window``
    queries are marked. Both are calibrated per model
    (:mod:`detectors.abuse.calibration`): the shares of each sample of
    ``calibration_queries`` queries (from at least ``calibration_principals``
    principals) set the threshold at their upper ``quantile`` (at most 0.1% of
    them marked, or the least share above which that holds), and the count
    rule is the binomial critical count of ``window`` queries at that marking
    rate (upper 95% bound) and false-alarm probability ``alpha``. Why: natural
    near-duplicates (the same record resent slightly changed, shifted images)
    are common in some models and absent in others, and their rate grows as
    the index fills, so the sample is renewed continually. Before a model's
    first calibration, ``match_fraction`` and ``min_flagged`` apply.
    Batching delays when a query enters the index, so interleaved Sybil accounts
    see only part of each other's queries: each account is still found on its
    own run, and the evidence names the accounts it matched. Its
    evidence names the other principals whose queries matched (colluding
    accounts). The index is shared by all principals this instance sees: in the
    daemon (``scope = "partition"``) that is the principals of one Kafka
    partition, so Sybil accounts spread over partitions are each judged on
    their own run. Cost per batch: a few numpy gathers and scatters over
    ``batch_size * top_n`` hashes, whatever the history; memory per model is
    the fixed table (16 bytes a slot) and a ring of 65,536 query owners.

    >>> import random
    >>> from detectors.testing import feed
    >>> rng = random.Random(0)
    >>> def q(i, who, x):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...                           principal=who, features=x, prediction=0)
    >>> natural = [q(i, f"u{i % 5}", [rng.gauss(0, 1) for _ in range(32)]) for i in range(600)]
    >>> x0 = [rng.gauss(0, 1) for _ in range(32)]
    >>> sybil = [q(600 + i, f"s{i % 4}", [v + rng.gauss(0, 0.02) for v in x0])
    ...          for i in range(400)]
    >>> found = feed(BlacklightProbingDetector(), natural + sybil)
    >>> sorted(f.entity.id for f in found), found[0].evidence["queries_examined"]
    (['s0', 's1', 's2', 's3'], 32)
    """

    name: ClassVar[str] = "probing.blacklight"
    state_fields: ClassVar[tuple[str, ...]] = ("calibrations", "table", "spaces", "indexes")
    kind: ClassVar[str] = "adversarial_probing"
    atlas: ClassVar[list[str]] = ATLAS_PROBING
    skip_repeats: ClassVar[bool] = True
    robust_space: ClassVar[bool] = True

    def __init__(
        self,
        quantum: float = 0.5,
        hash_window: int = 8,
        top_n: int = 20,
        match_fraction: float = 0.5,
        window: int = 50,
        min_flagged: int = 12,
        quantile: float = 0.001,
        alpha: float = 1e-6,
        calibration_queries: int = 500,
        calibration_principals: int = 10,
        max_index: int = 200_000,
        batch_size: int = 16,
        cooldown_seconds: float = 3600.0,
        calibration_rows: int = 256,
        max_principals: int = 200_000,
        seed: int = 0,
    ) -> None:
        if quantum <= 0 or not 0 < match_fraction <= 1 or not 1 <= min_flagged <= window:
            raise ValueError("quantum > 0, match_fraction in (0, 1], 1 <= min_flagged <= window")
        check_calibration(quantile, alpha, calibration_principals)
        self.quantile = quantile
        self.alpha = alpha
        self.calibration_queries = calibration_queries
        self.calibration_principals = calibration_principals
        self.calibrations: EntityTable[TailCalibration] = EntityTable(1024)
        self.quantum = quantum
        self.hash_window = hash_window
        self.top_n = top_n
        self.match_fraction = match_fraction
        self.window = window
        self.min_flagged = min_flagged
        self.max_index = max_index
        self._setup(
            batch_size=batch_size,
            cooldown_seconds=cooldown_seconds,
            max_principals=max_principals,
            calibration_rows=calibration_rows,
            max_dims=1 << 30,
            seed=seed,
        )
        rng = np.random.default_rng(seed)
        self.multipliers = rng.integers(1, 2**62, size=max(hash_window, 1), dtype=np.int64) | 1
        self.indexes: EntityTable[_BlacklightIndex] = EntityTable(1024)

    def new_state(self) -> QueryState:
        return _BlacklightState()

    def judge_run(self, run: list[Judgement]) -> list[list[Finding] | None]:
        out: list[list[Finding] | None] = [None] * len(run)
        bs = self.batch_size
        for at in by_model(run):
            space = run[at[0]].space
            rows = [r for i in at for r in run[i].rows]
            # Row-wise work for the whole run at once: quantise, hash, fingerprint.
            q = np.floor(space.standardise(rows) / self.quantum + 0.5).astype(np.int64)
            fps = _dedupe_rows(
                blacklight_fingerprints(q, self.hash_window, self.top_n, self.multipliers)
            )
            with np.errstate(over="ignore"):
                digests = q @ self.multipliers[np.arange(q.shape[1]) % len(self.multipliers)]
            hashes = np.maximum((fps != 0).sum(axis=1), 1)
            model = run[at[0]].event.model_id
            index = self.indexes.touch(model, lambda: _BlacklightIndex(self.max_index))
            # The index in event order: each batch sees the batches before it.
            first = index.next_id
            holder = np.empty_like(fps)
            for b in range(len(at)):
                part = fps[b * bs : (b + 1) * bs]
                holder[b * bs : (b + 1) * bs] = latest_holders(
                    part, index.lookup(part), index.next_id
                )
                index.add(part)
            best_qid, best_n = most_common_per_row(holder)
            # The statistic: the share of a query's fingerprint held by one earlier
            # query, 0 when that query is too old to name (its owner slot was
            # reused) or is the same query repeated (a retry is no probe).
            nxt = first + (np.arange(len(fps)) // bs + 1) * bs
            inrun = best_qid >= first
            theirs = np.where(
                inrun,
                digests[np.clip(best_qid - first, 0, len(fps) - 1)],
                index.digests[best_qid % index.owners_size],
            )
            valid = (best_n > 0) & (best_qid > nxt - index.owners_size) & (theirs != digests)
            share = np.where(valid, best_n / hashes, 0.0)
            principals = [run[i].event.principal for i in at for _ in range(bs)]
            cal = self.calibrations.touch(model, TailCalibration)
            for b, i in enumerate(at):
                rows_b = slice(b * bs, (b + 1) * bs)
                out[i] = self._judged_batch(
                    run[i], share[rows_b], best_qid[rows_b], (index, principals, first), cal
                )
            index.own(first, principals, digests)
        return out

    def _judged_batch(
        self,
        j: Judgement,
        share: np.ndarray,
        qids: np.ndarray,
        owners: tuple[_BlacklightIndex, list[str], int],
        cal: TailCalibration,
    ) -> list[Finding] | None:
        """Mark and count one batch; ``owners``: the index, the run's principals, its first id."""
        st, event, source = j.st, j.event, j.source
        assert isinstance(st, _BlacklightState)
        principal = event.principal
        rule = cal.rule
        limit, need = (
            (rule.threshold, rule.min_flagged)
            if rule is not None
            else (self.match_fraction, self.min_flagged)
        )
        marked = share >= limit
        flags, mask = st.flags, (1 << self.window) - 1
        index, principals, first = owners
        for m, qid in zip(marked.tolist(), qids.tolist(), strict=True):
            if m:  # a marked query's match is recent enough to have its owner in the ring
                ring = index.owners[qid % index.owners_size]
                who = principals[qid - first] if qid >= first else ring
                if who is not None and who != principal and len(st.partners) < 16:
                    st.partners[who] = st.partners.get(who, 0) + 1
            flags = ((flags << 1) | m) & mask
        st.flags = flags
        st.examined += self.batch_size
        if cal.add(
            principal,
            share.tolist(),
            target=self.calibration_queries,
            min_principals=self.calibration_principals,
        ):
            cal.finish(q=self.quantile, alpha=self.alpha, window=self.window, low=False)
        flagged = flags.bit_count()
        if flagged < need or self.quiet(st, event.ts):  # type: ignore[arg-type]
            return None
        partners = sorted(st.partners, key=st.partners.__getitem__, reverse=True)[:5]
        shared_with = f" (also matching {len(st.partners)} other principals)" if partners else ""
        return self.finding(
            st,
            event,
            source,
            severity="high" if partners or flagged >= 2 * need else "medium",
            summary=(
                f"{flagged} of the principal's last {min(st.examined, self.window)} queries "
                f"share at least {limit:.0%} of their fingerprint with an earlier "
                f"query{shared_with}: a query-based black-box attack is likely; block and "
                f"review the accounts."
            ),
            evidence={
                "statistic": "queries whose quantised-window fingerprint matches an earlier one",
                "flagged_queries": flagged,
                "window_queries": min(st.examined, self.window),
                "min_flagged": need,
                "match_fraction_threshold": round(limit, 6),
                **_calibration_evidence(rule),
                "fingerprint_hashes": self.top_n,
                "queries_examined": st.examined,
                "other_principals_matched": partners,
                "other_principal_match_counts": [st.partners[p] for p in partners],
            },
        )

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out["index_hashes"] = sum(i.filled for _, i in self.indexes.items())
        return out


@lru_cache(maxsize=4096)
def binomial_critical_count(n: int, p0_permille: int, alpha: float) -> int:
    """Smallest k with P(X >= k) <= alpha for X ~ Binomial(n, p0/1000).

    >>> binomial_critical_count(50, 100, 1e-6)
    18
    """
    return binomial_critical(n, min(max(p0_permille, 1), 999) / 1000.0, alpha)


@state_type("abuse.low_confidence_principal")
class _ConfState:
    __slots__ = ("count", "critical", "fired_block", "low", "total")

    def __init__(self) -> None:
        self.count = 0  # queries in the current block
        self.low = 0  # low-confidence queries in the current block
        self.critical = 1 << 30
        self.total = 0
        self.fired_block = -1


@state_type("abuse.low_confidence_model")
class _ModelConf:
    __slots__ = ("low", "n", "seen")

    def __init__(self) -> None:
        self.low = 0.0  # decayed count of low-confidence answers
        self.n = 0.0  # decayed count of answers
        self.seen = 0


class LowConfidenceProbingDetector(Detector):
    """A principal's share of low-confidence answers far above the model's baseline.

    Attack queries sit at the decision boundary, so the model answers them with
    low confidence (in the repo's HopSkipJump run on digits: mean 0.37 against
    0.80 for benign callers). Per model, an exponentially weighted share p0 of
    answers below ``low_confidence`` is kept (half-life ``baseline_events``).
    Per (principal, model), queries are counted in blocks of ``block``; the
    principal is reported as soon as the block's low-confidence count reaches the
    binomial critical value for p0 at false-alarm probability ``alpha`` per
    block, and the block's share is at least ``min_share``. Events without a
    confidence are ignored. O(1) per event.

    >>> from detectors.testing import feed
    >>> def q(i, who, conf):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...                           principal=who, features=[0.0], prediction=0,
    ...                           confidence=conf)
    >>> calm = [q(i, f"u{i % 7}", 0.45 if i % 10 == 0 else 0.95) for i in range(2000)]
    >>> probe = [q(2000 + i, "eve", 0.5) for i in range(100)]
    >>> found = feed(LowConfidenceProbingDetector(), calm + probe)
    >>> [(f.entity.id, f.evidence["block_queries"]) for f in found]
    [('eve', 20)]
    """

    name: ClassVar[str] = "probing.low_confidence"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "models", "quiet_until")
    event_types: ClassVar[frozenset[str]] = frozenset({"inference"})

    def __init__(
        self,
        low_confidence: float = 0.6,
        block: int = 50,
        alpha: float = 1e-6,
        min_share: float = 0.4,
        baseline_events: int = 5000,
        warmup_events: int = 500,
        cooldown_seconds: float = 3600.0,
        max_principals: int = 200_000,
    ) -> None:
        if not 0 < low_confidence <= 1 or block < 5 or not 0 < alpha < 1:
            raise ValueError("low_confidence in (0, 1], block >= 5, alpha in (0, 1)")
        self.low_confidence = low_confidence
        self.block = block
        self.alpha = alpha
        self.min_share = min_share
        self.decay = 0.5 ** (1.0 / baseline_events)
        self.warmup_events = warmup_events
        self.cooldown_seconds = cooldown_seconds
        self.table: EntityTable[Any] = EntityTable(max_principals)
        self.models: EntityTable[_ModelConf] = EntityTable(1024)
        self.quiet_until: dict[str, float] = {}

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, InferenceEvent)
        conf = event.confidence
        if conf is None:
            return None
        model = event.model_id
        m = self.models.get(model) or self.models.touch(model, _ModelConf)
        low = conf < self.low_confidence
        m.low = m.low * self.decay + low
        m.n = m.n * self.decay + 1.0
        m.seen += 1
        st = self.table.touch(f"{event.principal}\x1f{model}", _ConfState)
        if st.count == 0:
            self.models.touch(model, _ModelConf)  # keep an active model recently used
            # The block's critical count is fixed at its start, from a warmed-up baseline.
            if m.seen < self.warmup_events:
                st.critical = 1 << 30
            else:
                p0 = max(m.low / m.n, 0.01)
                st.critical = max(
                    binomial_critical_count(self.block, round(p0 * 1000), self.alpha),
                    math.ceil(self.min_share * self.block),
                )
        st.count += 1
        st.total += 1
        st.low += low
        block_no = st.total // self.block
        found = None
        if st.low >= st.critical and st.fired_block != block_no:
            found = self._fire(st, m, event, source)
            st.fired_block = block_no
        if st.count >= self.block:
            st.count = st.low = 0
        return found

    def _fire(
        self, st: _ConfState, m: _ModelConf, event: InferenceEvent, source: Source
    ) -> list[Finding] | None:
        ts = float(event.ts)
        key = f"{event.principal}\x1f{event.model_id}"
        if m.seen < self.warmup_events or ts < self.quiet_until.get(key, -math.inf):
            return None
        if len(self.quiet_until) > len(self.table) * 2 + 1024:  # drop stale cooldowns
            self.quiet_until = {k: v for k, v in self.quiet_until.items() if v > ts}
        self.quiet_until[key] = ts + self.cooldown_seconds
        p0 = m.low / m.n
        share = st.low / st.count
        return [
            Finding.build(
                detector=self.name,
                kind="adversarial_probing",
                severity="high" if share >= 0.8 else "medium",
                entity=Entity("principal", event.principal),
                model_id=event.model_id,
                summary=(
                    f"{st.low} of the principal's last {st.count} answers had confidence below "
                    f"{self.low_confidence:g} against a model baseline of {p0:.1%}: its queries "
                    f"sit on the decision boundary, as in black-box evasion attacks; review it."
                ),
                evidence={
                    "statistic": "low-confidence answers in the current block (binomial test)",
                    "observed_low": st.low,
                    "block_queries": st.count,
                    "observed_share": round(share, 4),
                    "baseline_share": round(p0, 4),
                    "critical_count": st.critical,
                    "alpha": self.alpha,
                    "confidence_threshold": self.low_confidence,
                    "queries_examined": st.total,
                },
                atlas=ATLAS_PROBING,
                event_ts=ts,
                sources=[source],
            )
        ]

