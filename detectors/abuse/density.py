"""Model extraction by off-distribution queries: a principal's inputs in low-density regions.

Synthetic extraction (Tramer et al. 2016; Papernot et al. 2017; the box-uniform
and Jacobian-augmentation thieves of the extraction literature) queries the
model with inputs drawn to cover its input box, not with the data its callers
have. Such inputs lie where the model's live traffic is sparse: uniform noise
images next to handwritten digits, random unit vectors next to an embedding's
topic clusters, independent uniform columns next to correlated, skewed tabular
records. :class:`DensityExtractionDetector` measures, per query, how far the
input is from the model's population (the other principals' recent inputs)
and reports a principal whose share of far-out queries exceeds the share its
peers show, with the threshold set from the model's own traffic (a false-alarm
budget, as for the stateful probing detectors and the MMD-style extraction
monitor of the detection-science notes: benign-vs-benign comparisons only).

Unlike PRADA (which looks at the principal's own query geometry) this needs
no particular structure of the attack sequence, and unlike coverage it does
not grow with volume: a thief sending a few hundred box-uniform queries at a
benign caller's pace is as visible as a fast one. Natural-data ("knockoff")
thieves are, by construction, not visible to it.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from typing import ClassVar, Final

import numpy as np

from detectors.abuse.calibration import (
    CONFIDENCE,
    TailCalibration,
    TailRule,
    calibrate_tail,
    calibration_stats,
    check_calibration,
)
from detectors.abuse.common import (
    ATLAS_EXTRACTION,
    BatchedQueryDetector,
    Judgement,
    QueryState,
    by_model,
)
from detectors.abuse.space import ModelSpace, stable_seed
from detectors.binomial import binomial_critical
from detectors.events import InferenceEvent
from detectors.findings import Finding
from detectors.state import EntityTable
from detectors.state_codec import state_type

#: Batches of the model's traffic that tell whether the whole population is far.
_RECENT_BATCHES: Final = 16

#: Batches after a population-wide move during which nobody is reported.
_SETTLE_BATCHES: Final = 256

__all__ = ["DensityExtractionDetector", "PopulationSample", "calibrate_far", "knn_distance"]


def knn_distance(
    x: np.ndarray, sample: np.ndarray, owners: np.ndarray, own: int, k: int
) -> np.ndarray:
    """Distance of each row of ``x`` to its ``k``-th nearest row of ``sample``,
    ignoring rows whose owner is ``own`` (a principal is never its own reference).

    inf when fewer than ``k`` rows of other owners exist.

    >>> s = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=np.float32)
    >>> knn_distance(np.array([[0.0, 0.0]], dtype=np.float32), s, np.array([1, 2, 3]), 1, 1)
    array([1.], dtype=float32)
    """
    sq = (x * x).sum(axis=1)[:, None] + (sample * sample).sum(axis=1)[None, :]
    # einsum, not BLAS: a tiny product, and a threaded BLAS on a busy host costs 30x more
    sq -= 2.0 * np.einsum("id,jd->ij", x, sample)
    np.maximum(sq, 0.0, out=sq)
    sq[:, owners == own] = np.inf
    if k > sq.shape[1]:
        return np.full(len(x), np.inf, dtype=sq.dtype)
    out: np.ndarray = np.sqrt(np.partition(sq, k - 1, axis=1)[:, k - 1])
    return out


class _SampleIndex:
    """Who holds which rows of a :class:`PopulationSample`, kept as rows move.

    The principal holding the most rows (ties: the highest code) comes from a
    lazy max-heap, and a principal's rows from its sorted slot list, instead of
    a scan of every principal and every row per added row (a third of the
    detect path's time once the sample was full). Derived data: not saved.
    """

    __slots__ = ("heap", "slots")

    def __init__(self, count: dict[int, int], owners: np.ndarray) -> None:
        self.slots: dict[int, list[int]] = {}
        for at, who in enumerate(owners.tolist()):
            self.slots.setdefault(who, []).append(at)
        self.heap: list[tuple[int, int]] = [(-n, -who) for who, n in count.items()]
        heapq.heapify(self.heap)

    def largest(self, count: dict[int, int]) -> int:
        """``max(count, key=lambda o: (count[o], o))``, from the heap."""
        heap = self.heap
        if len(heap) > 4 * len(count) + 64:  # stale entries: start afresh
            heap[:] = [(-n, -who) for who, n in count.items()]
            heapq.heapify(heap)
        while count.get(-heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)
        return -heap[0][1]

    def moved(self, at: int, old: int | None, new: int, new_count: int,
              old_count: int = 0) -> None:
        """Row ``at`` went from ``old`` (None: a free row) to ``new``, who now holds
        ``new_count`` rows (``old``: ``old_count``)."""
        if old is not None:
            mine = self.slots[old]
            del mine[bisect.bisect_left(mine, at)]
            if old_count:
                heapq.heappush(self.heap, (-old_count, -old))
            else:
                del self.slots[old]
        bisect.insort(self.slots.setdefault(new, []), at)
        heapq.heappush(self.heap, (-new_count, -new))


@state_type("abuse.density_sample")
class PopulationSample:
    """A model's reference sample: embedded inputs of its principals, balanced by owner.

    Each principal holds at most ``capacity // min_owners`` rows; once the
    sample is full, a newcomer's row replaces one of the principal holding
    the most, and a principal at its share replaces its own rows in turn (so
    its rows follow its traffic). One busy caller, or an attacker, cannot
    stand for the population, and an hour when few callers are active does
    not empty the sample of the others.
    """

    __slots__ = ("_index", "count", "filled", "owners", "per_owner", "rows", "turn")

    #: What a checkpoint holds (the index is rebuilt from it on first use).
    _SAVED: ClassVar[tuple[str, ...]] = ("count", "filled", "owners", "per_owner", "rows", "turn")

    def __init__(self, capacity: int, dims: int, min_owners: int) -> None:
        self.rows = np.zeros((capacity, dims), dtype=np.float32)
        self.owners = np.zeros(capacity, dtype=np.int64)
        self.filled = 0
        self.turn = 0
        self.per_owner = max(capacity // min_owners, 1)
        self.count: dict[int, int] = {}
        self._index: _SampleIndex | None = None

    def __getstate__(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self._SAVED}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name in self._SAVED:
            object.__setattr__(self, name, state[name])
        self._index = None

    def add(self, rows: np.ndarray, owner: int) -> None:
        count = self.count
        index = getattr(self, "_index", None)  # unset in checkpoints of 0.x
        if index is None:
            index = self._index = _SampleIndex(count, self.owners[: self.filled])
        for row in rows:
            have = count.get(owner, 0)
            victim = owner
            if have < self.per_owner:
                if self.filled < len(self.rows):
                    at = self.filled
                    self.filled += 1
                    count[owner] = have + 1
                    index.moved(at, None, owner, have + 1)
                    self.rows[at] = row
                    self.owners[at] = owner
                    continue
                largest = index.largest(count)
                if count[largest] > have:
                    victim = largest
            slots = index.slots[victim]
            self.turn += 1
            at = slots[self.turn % len(slots)]
            if victim != owner:
                count[victim] -= 1
                if not count[victim]:
                    del count[victim]
                count[owner] = have + 1
                index.moved(at, victim, owner, have + 1, count.get(victim, 0))
            self.rows[at] = row
            self.owners[at] = owner

    def ready(self, min_owners: int) -> bool:
        """Half full, with rows of at least ``min_owners`` principals."""
        return 2 * self.filled >= len(self.rows) and len(self.count) >= min_owners


def calibrate_far(
    samples: dict[str, list[float]], *, q: float, alpha: float, window: int
) -> TailRule | None:
    """:func:`calibrate_tail` for a high-is-suspicious distance, with the threshold
    at least the median of the calibrating callers' own 99th percentiles.

    Callers differ (a noisy client sits further out than a clean one); a pooled
    0.1% tail taken at an hour when mostly clean clients call would mark a
    noisy one's ordinary queries. The per-caller floor keeps the threshold in
    every typical caller's tail; p0 and the count rule follow from it.

    >>> rng = np.random.default_rng(0)
    >>> clean = {f"c{i}": rng.normal(1.0, 0.05, 200).tolist() for i in range(12)}
    >>> noisy = {f"n{i}": rng.normal(1.2, 0.05, 200).tolist() for i in range(12)}
    >>> rule = calibrate_far({**clean, **noisy}, q=0.001, alpha=1e-6, window=64)
    >>> tails = [np.quantile(v, 0.99) for v in {**clean, **noisy}.values()]
    >>> round(rule.threshold, 2), bool(rule.threshold >= np.median(tails))
    (1.34, True)
    """
    rule = calibrate_tail(samples, q=q, alpha=alpha, window=window, low=False)
    if rule is None:
        return None
    # Every caller's tail (a median: robust to attackers fewer than half of them).
    tails = [float(np.quantile(v, 0.99)) for v in samples.values() if len(v) >= 100]
    kept = {p: np.asarray(v) for p, v in samples.items() if v and p not in rule.excluded}
    if not tails or float(np.median(tails)) <= rule.threshold:
        return rule
    t = float(np.median(tails))
    values = np.concatenate(list(kept.values()))
    marked = int((values >= t).sum())
    from scipy.stats import beta

    p0 = max(q, float(beta.ppf(CONFIDENCE, marked + 1, len(values) - marked)))
    shares = [float((v >= t).mean()) for v in kept.values() if len(v) >= 10]
    if shares:
        p0 = max(p0, float(np.quantile(shares, 0.9)))
    k = binomial_critical(window, min(p0, 1.0), alpha)
    return TailRule(t, p0, k, rule.queries, rule.principals, rule.excluded)


@state_type("abuse.density_principal")
class _DensityState(QueryState):
    __slots__ = ("marks", "owner", "pending")

    def __init__(self) -> None:
        super().__init__()
        self.marks: deque[int] = deque()
        self.owner = 0
        self.pending = False


@state_type("abuse.density_pending")
class _Pending:
    """A principal over the count rule, reported once the others' next batches are seen."""

    __slots__ = ("due", "event", "far", "rule", "source", "st")

    def __init__(self, st: _DensityState, j: Judgement, far: int, rule: TailRule,
                 due: int) -> None:
        self.st = st
        self.event = j.event
        self.source = j.source
        self.far = far
        self.rule = rule
        self.due = due


@state_type("abuse.density_model")
class _ModelState:
    __slots__ = ("batches", "calibration", "pending", "recent", "sample", "settle_until")

    def __init__(self) -> None:
        self.sample: PopulationSample | None = None
        self.calibration = TailCalibration()
        #: The latest judged batches of every principal: (owner, far, queries).
        self.recent: deque[tuple[int, int, int]] = deque(maxlen=_RECENT_BATCHES)
        self.batches = 0  # batches judged
        self.pending: list[_Pending] = []
        #: After a population-wide move, nobody is reported until this batch
        #: (the sample takes a while to follow the new traffic).
        self.settle_until = 0

    def others_share(self, owner: int) -> float:
        """Share of far queries in the other principals' latest batches (0 if none)."""
        far = n = 0
        for who, f, k in self.recent:
            if who != owner:
                far += f
                n += k
        return far / n if n else 0.0


class DensityExtractionDetector(BatchedQueryDetector):
    """Principal's queries in low-density regions of the model's live population.

    Per model: a reference sample of ``sample_rows`` inputs of its principals
    (every ``sample_every``-th query of each, at most ``sample_rows /
    min_owners`` per principal, oldest replaced; in the model's robustly scaled
    space, see :class:`ModelSpace`). A query's statistic is its distance to the
    ``neighbours``-th nearest sample row of *another* principal, in units of
    the model's typical inter-input distance: small among natural inputs,
    large for inputs where the model's callers never go.

    Calibration (:mod:`detectors.abuse.calibration`, per model, from its own
    traffic): once the sample is half full and holds ``min_owners`` principals,
    the statistics of the next ``calibration_queries`` queries (at most
    ``calibration_queries / min_owners`` per principal) set the threshold at
    the ``1 - quantile`` quantile, and at least the median of the calibrating
    callers' own 99th percentiles (:func:`calibrate_far`; a query is *far*
    beyond it), the per-query
    rate p0 (an upper bound, at least the 90th percentile of the calibrating
    callers' own shares) and the count rule: a principal is reported when at
    least ``min_flagged`` of its last ``window`` queries are far, the binomial
    critical count at false-alarm probability ``alpha`` per window, and at
    least ``min_share`` of the window (a minimum effect size; off by default:
    a benign caller that also sends a segment nobody else sends, a few queries
    in ten, is over the count rule, but so is the random-unit-vector thief of
    a 48-dimensional embedding model, a quarter of whose queries are far;
    ``min_share: 0.5`` spares the one and misses the other). Principals
    the rule itself would report are left out of the calibration. The rule is
    recomputed from every following sample, so it follows the traffic. Nothing
    is judged before the first rule (a cold start of some thousand queries).

    A principal over the rule is reported after the model's next 16 judged
    batches, unless more than ``drift_share`` of the other principals' queries
    in them are far too: then the whole population has moved (an upstream
    change, which the drift detectors report) and nobody is reported for the
    model's next 256 batches, while its sample follows the new traffic.
    A reported principal's inputs never enter the sample; its next finding
    comes after ``cooldown_seconds`` at the earliest (the pipeline turns it
    into an update of the open incident). Principals in ``exempt_principals``
    are not reported. Exact repeats of a principal's recent queries are
    skipped. Partition-scoped like the other extraction detectors: in a
    deployment with several partitions, a partition's sample holds that
    partition's principals.

    >>> from detectors.testing import feed
    >>> rng = np.random.default_rng(3)
    >>> centres = rng.normal(size=(5, 16)) * 3
    >>> def q(i, who, x):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...         principal=who, features=x.tolist(), prediction=0)
    >>> def natural(n):
    ...     return centres[rng.integers(5, size=n)] + rng.normal(size=(n, 16))
    >>> users = [q(i, f"u{i % 12}", x) for i, x in enumerate(natural(9000))]
    >>> feed(DensityExtractionDetector(), users)
    []

    A box-uniform thief sends one query in four while the callers go on (a
    finding waits for the model's next batches, so the traffic must go on):

    >>> box = rng.uniform(-8, 8, size=(300, 16))
    >>> thief = [q(9000 + 4 * i + 3, "thief", x) for i, x in enumerate(box)]
    >>> more = [q(9000 + i, f"u{i % 12}", x) for i, x in enumerate(natural(1200)) if i % 4 != 3]
    >>> mixed = sorted(more + thief, key=lambda e: e.ts)
    >>> [(f.entity.id, f.evidence["queries_examined"]) for f in
    ...  feed(DensityExtractionDetector(), users + mixed)]
    [('thief', 192)]
    """

    name: ClassVar[str] = "extraction.density"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "spaces", "models")
    kind: ClassVar[str] = "model_extraction"
    atlas: ClassVar[list[str]] = ATLAS_EXTRACTION
    skip_repeats: ClassVar[bool] = True
    robust_space: ClassVar[bool] = True

    def __init__(
        self,
        sample_rows: int = 1024,
        sample_every: int = 4,
        min_owners: int = 4,
        neighbours: int = 3,
        quantile: float = 0.001,
        alpha: float = 1e-6,
        window: int = 64,
        calibration_queries: int = 4096,
        drift_share: float = 0.05,
        min_share: float = 0.0,
        exempt_principals: tuple[str, ...] = (),
        batch_size: int = 32,
        cooldown_seconds: float = 86_400.0,
        calibration_rows: int = 256,
        max_dims: int = 32,
        max_principals: int = 100_000,
        max_models: int = 1024,
        seed: int = 0,
    ) -> None:
        check_calibration(quantile, alpha, min_owners)
        if sample_rows < 2 * min_owners or sample_every < 1 or neighbours < 1:
            raise ValueError("sample_rows >= 2 * min_owners, sample_every >= 1, neighbours >= 1")
        if window < batch_size or calibration_queries < 10 * min_owners:
            raise ValueError("window >= batch_size, calibration_queries >= 10 * min_owners")
        if not 0.0 <= min_share <= 1.0:
            raise ValueError("min_share in [0, 1]")
        self.sample_rows = sample_rows
        self.sample_every = sample_every
        self.min_owners = min_owners
        self.neighbours = neighbours
        self.quantile = quantile
        self.alpha = alpha
        self.window = window
        self.calibration_queries = calibration_queries
        self.drift_share = drift_share
        #: Minimum effect size: far queries needed in a window, whatever the count rule.
        self.min_far = math.ceil(min_share * window)
        self.exempt_principals = frozenset(exempt_principals)
        self.models: EntityTable[_ModelState] = EntityTable(max_models)
        self._setup(
            batch_size=batch_size,
            cooldown_seconds=cooldown_seconds,
            calibration_rows=calibration_rows,
            max_principals=max_principals,
            max_dims=max_dims,
            seed=seed,
            max_models=max_models,
        )

    def new_state(self) -> QueryState:
        return _DensityState()

    def judge_run(self, run: list[Judgement]) -> list[list[Finding] | None]:
        out: list[list[Finding] | None] = [None] * len(run)
        for at in by_model(run):
            space = run[at[0]].space
            x = space.embed_stack([r for i in at for r in run[i].rows], self.batch_size)
            model = self.models.touch(run[at[0]].event.model_id, _ModelState)
            # In order: each judgement sees the sample as the earlier ones left it.
            for b, i in enumerate(at):
                out[i] = self._judged_batch(run[i], space, model, x[b])
        return out

    def _judged_batch(
        self, j: Judgement, space: ModelSpace, model: _ModelState, x: np.ndarray
    ) -> list[Finding] | None:
        st, event = j.st, j.event
        assert isinstance(st, _DensityState) and isinstance(event, InferenceEvent)
        if not st.owner:
            st.owner = stable_seed(event.principal) | 1
        sample = model.sample
        if sample is None or sample.rows.shape[1] != x.shape[1]:
            sample = model.sample = PopulationSample(self.sample_rows, x.shape[1], self.min_owners)
        found: list[Finding] | None = None
        if sample.ready(self.min_owners):
            d = knn_distance(x, sample.rows, sample.owners, st.owner, self.neighbours)
            stat = (d / max(space.spread, 1e-12)).tolist()
            st.examined += len(stat)
            if model.calibration.add(
                event.principal, stat, target=self.calibration_queries,
                min_principals=self.min_owners,
            ):
                cal = model.calibration
                rule = calibrate_far(cal.samples, q=self.quantile, alpha=self.alpha,
                                     window=self.window)
                cal.rule = rule or cal.rule
                cal.samples, cal.queries = {}, 0
            rule = model.calibration.rule
            if rule is not None:
                self._judge(j, st, rule, stat, model)
            found = self._due(model)
        if not st.fired and not st.pending:
            sample.add(x[:: self.sample_every], st.owner)
        return found

    def _judge(
        self, j: Judgement, st: _DensityState, rule: TailRule, stat: list[float],
        model: _ModelState,
    ) -> None:
        marks = st.marks
        limit = rule.threshold
        new = [1 if s >= limit else 0 for s in stat]
        marks.extend(new)
        while len(marks) > self.window:
            marks.popleft()
        model.recent.append((st.owner, sum(new), len(new)))
        model.batches += 1
        event = j.event
        if len(marks) < self.window or event.principal in self.exempt_principals:
            return
        far = sum(marks)
        if far < max(rule.min_flagged, self.min_far) or st.pending \
                or st.cooling_down(float(event.ts)):
            return
        if model.batches < model.settle_until:
            marks.clear()
            return
        # Reported once the model's next batches show whether only this principal
        # is far, or the whole population moved (an upstream change: drift, not theft).
        st.pending = True
        model.pending.append(_Pending(st, j, far, rule, model.batches + _RECENT_BATCHES))

    def _due(self, model: _ModelState) -> list[Finding] | None:
        if not model.pending or model.pending[0].due > model.batches:
            return None
        out: list[Finding] = []
        while model.pending and model.pending[0].due <= model.batches:
            p = model.pending.pop(0)
            p.st.pending = False
            p.st.marks.clear()
            if model.others_share(p.st.owner) <= self.drift_share:
                out.extend(self._finding(p))
            else:
                model.settle_until = model.batches + _SETTLE_BATCHES
        return out or None

    def _finding(self, p: _Pending) -> list[Finding]:
        st, rule, far, event = p.st, p.rule, p.far, p.event
        assert isinstance(event, InferenceEvent)
        share = far / self.window
        return self.finding(
            st,
            event,
            p.source,
            severity="high" if share >= 0.5 else "medium",
            summary=(
                f"{far} of the principal's last {self.window} queries lie where the model's "
                f"other callers send almost nothing ({share:.0%}, against about "
                f"{rule.p0:.1%} for its callers): synthetic, off-distribution inputs as in "
                f"model extraction; review its purpose and rate-limit it."
            ),
            evidence={
                "statistic": "share of queries far from the model's population "
                "(distance to the k-th nearest other caller's input / typical distance)",
                "observed_far": far,
                "window": self.window,
                "observed_share": round(share, 4),
                "threshold_count": rule.min_flagged,
                "baseline_share": round(rule.p0, 6),
                "threshold_distance": round(rule.threshold, 4),
                "alpha": self.alpha,
                "calibration_queries": rule.queries,
                "calibration_principals": rule.principals,
                "queries_examined": st.examined,
            },
        )

    def stats(self) -> dict[str, float]:
        out = super().stats()
        # The sample sizes the latest rules rest on (the largest over the models).
        out.update(calibration_stats(m.calibration.rule for _, m in self.models.items()))
        return out

