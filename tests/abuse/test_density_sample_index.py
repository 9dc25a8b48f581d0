"""PopulationSample keeps who-holds-what in an index: the same rows as the scan it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.abuse.density import PopulationSample
from detectors.state_codec import decode, encode


class _Scanning:
    """The sample as it was: a scan of every principal and every row per added row."""

    def __init__(self, capacity: int, dims: int, min_owners: int) -> None:
        self.rows = np.zeros((capacity, dims), dtype=np.float32)
        self.owners = np.zeros(capacity, dtype=np.int64)
        self.filled = 0
        self.turn = 0
        self.per_owner = max(capacity // min_owners, 1)
        self.count: dict[int, int] = {}

    def add(self, rows: np.ndarray, owner: int) -> None:
        count = self.count
        for row in rows:
            have = count.get(owner, 0)
            victim = owner
            if have < self.per_owner:
                if self.filled < len(self.rows):
                    at = self.filled
                    self.filled += 1
                    count[owner] = have + 1
                    self.rows[at] = row
                    self.owners[at] = owner
                    continue
                largest = max(count, key=lambda o: (count[o], o))
                if count[largest] > have:
                    victim = largest
            slots = np.flatnonzero(self.owners[: self.filled] == victim)
            self.turn += 1
            at = int(slots[self.turn % len(slots)])
            if victim != owner:
                count[victim] -= 1
                if not count[victim]:
                    del count[victim]
                count[owner] = have + 1
            self.rows[at] = row
            self.owners[at] = owner


@pytest.mark.parametrize("seed", range(6))
def test_indexed_sample_holds_the_rows_the_scan_held(seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity, owners = int(rng.integers(16, 200)), int(rng.integers(2, 60))
    min_owners = int(rng.integers(1, 12))
    fast, slow = PopulationSample(capacity, 3, min_owners), _Scanning(capacity, 3, min_owners)
    for step in range(600):
        # Skewed callers (a few heavy, many light), batches of 1..40 rows.
        who = int(min(rng.zipf(1.5), owners))
        rows = rng.normal(size=(int(rng.integers(1, 40)), 3)).astype(np.float32)
        fast.add(rows, who)
        slow.add(rows, who)
        if step % 97 == 0:  # through a checkpoint: the index is rebuilt from the saved fields
            fast = decode(encode(fast))
        assert fast.count == slow.count and fast.turn == slow.turn
        assert np.array_equal(fast.owners, slow.owners) and np.array_equal(fast.rows, slow.rows)


def test_a_checkpoint_holds_no_index() -> None:
    sample = PopulationSample(8, 2, 2)
    sample.add(np.ones((9, 2), dtype=np.float32), 1)
    assert set(sample.__getstate__()) == {"count", "filled", "owners", "per_owner", "rows", "turn"}
