"""``probing.blacklight``: query fingerprints shared with earlier queries, across principals.

Blacklight (Li et al. 2022): quantised-query fingerprints in an inverted index
shared by all principals of a model (:mod:`detectors.abuse.fingerprints`), so
near-duplicates are found across accounts (Sybil attacks) at constant cost.
Exact repeats of a query are not counted as probing.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from detectors.abuse.calibration import (
    CountRule,
    TailCalibration,
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
from detectors.abuse.fingerprints import (
    BlacklightIndex,
    blacklight_fingerprints,
    dedupe_rows,
    latest_holders,
    most_common_per_row,
)
from detectors.findings import Finding
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["BlacklightProbingDetector"]


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
    >>> from detectors.events import InferenceEvent
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
        self.count_rule = CountRule(
            threshold=match_fraction, min_flagged=min_flagged, window=window, quantile=quantile,
            alpha=alpha, queries=calibration_queries, principals=calibration_principals,
            low=False,
        )
        self.calibrations: EntityTable[TailCalibration] = EntityTable(1024)
        self.quantum = quantum
        self.hash_window = hash_window
        self.top_n = top_n
        self.window = window
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
        self.indexes: EntityTable[BlacklightIndex] = EntityTable(1024)

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
            fps = dedupe_rows(
                blacklight_fingerprints(q, self.hash_window, self.top_n, self.multipliers)
            )
            with np.errstate(over="ignore"):
                digests = q @ self.multipliers[np.arange(q.shape[1]) % len(self.multipliers)]
            hashes = np.maximum((fps != 0).sum(axis=1), 1)
            model = run[at[0]].event.model_id
            index = self.indexes.touch(model, lambda: BlacklightIndex(self.max_index))
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
        owners: tuple[BlacklightIndex, list[str], int],
        cal: TailCalibration,
    ) -> list[Finding] | None:
        """Mark and count one batch; ``owners``: the index, the run's principals, its first id."""
        st, event, source = j.st, j.event, j.source
        assert isinstance(st, _BlacklightState)
        principal = event.principal
        rule = cal.rule
        limit, need = self.count_rule.current(cal)
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
        self.count_rule.learn(cal, principal, share.tolist())
        flagged = flags.bit_count()
        if flagged < need or st.cooling_down(event.ts):  # type: ignore[arg-type]
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
                **calibration_evidence(rule),
                "fingerprint_hashes": self.top_n,
                "queries_examined": st.examined,
                "other_principals_matched": partners,
                "other_principal_match_counts": [st.partners[p] for p in partners],
            },
        )

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out["index_hashes"] = sum(i.filled for _, i in self.indexes.items())
        out.update(calibration_stats(c.rule for _, c in self.calibrations.items()))
        return out

