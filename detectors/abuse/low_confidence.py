"""``probing.low_confidence``: a principal's share of low-confidence answers.

Attack queries sit at the decision boundary, so the model answers them with
low confidence. The share of a principal's queries answered below a
confidence bar is tested against the model's baseline share (a binomial test
with a false-alarm budget, :mod:`detectors.binomial`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from detectors.abuse.common import ATLAS_PROBING, principal_finding
from detectors.base import Detector
from detectors.binomial import binomial_critical_count
from detectors.events import Event, InferenceEvent
from detectors.findings import Finding, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["LowConfidenceProbingDetector"]


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

    def stats(self) -> dict[str, float]:
        """Also the calibration sample: the models past warm-up, and the (decayed)
        number of answers their baselines rest on (the largest over the models)."""
        out = super().stats()
        warm = [m.n for _, m in self.models.items() if m.seen >= self.warmup_events]
        out["calibrated_models"] = len(warm)
        out["calibration_answers"] = round(max(warm, default=0.0))
        return out

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
        return principal_finding(
            self.name,
            "adversarial_probing",
            event,
            source,
            severity="high" if share >= 0.8 else "medium",
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
        )

