"""The grids ``extraction.coverage`` lays over a model's embedded inputs.

Each query is projected on ``grid_dims`` seeded random orthonormal axes of
the model's embedding (every input feature counts, each axis keeps the
embedding's scale) and falls in two cells:

- a **fine** cell (breadth): ``grid_levels`` bins per axis, bin edges at
  multiples of ``bin_width`` model spreads, hashed to a uint64;
- a **coarse** cell (novelty): the first ``novelty_dims`` axes cut in
  unbounded bins ``novelty_width`` typical per-axis deviations wide, hashed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detectors.abuse.sketch import mix64
from detectors.abuse.space import ModelSpace, stable_seed

__all__ = ["CoverageGrid"]

#: Rotations memoised per (embedding width, model seed) before starting over.
_MAX_ROTATIONS = 1024


class CoverageGrid:
    """The fine and coarse grids, from config (see the module doc)."""

    __slots__ = (
        "bin_width",
        "grid_dims",
        "grid_levels",
        "novelty_dims",
        "novelty_mult",
        "novelty_width",
        "place",
    )

    def __init__(
        self,
        grid_dims: int,
        grid_levels: int,
        bin_width: float,
        novelty_dims: int,
        novelty_width: float,
        seed: int,
    ) -> None:
        self.grid_dims = grid_dims
        self.grid_levels = grid_levels
        self.bin_width = bin_width
        self.novelty_dims = novelty_dims
        self.novelty_width = novelty_width
        self.place = (grid_levels ** np.arange(grid_dims)).astype(np.uint64)
        rng = np.random.default_rng(stable_seed(seed, "novelty"))
        self.novelty_mult = rng.integers(1, 2**62, size=novelty_dims, dtype=np.int64) | 1

    def cells(
        self,
        space: ModelSpace,
        rows: list[Any],
        batch_size: int,
        rotations: dict[tuple[int, int], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hashed fine (breadth) and coarse (novelty) grid cells of ``rows``, one per row.

        ``rotations`` memoises each model's projection (the detector's, saved
        with its state).
        """
        e = space.embed_stack(rows, batch_size)
        key = (e.shape[2], space.seed)
        rotation = rotations.get(key)
        if rotation is None:
            # A seeded random orthonormal map to grid_dims axes: every input
            # feature counts, and each axis keeps the embedding's scale.
            g = np.random.default_rng(space.seed).normal(size=(e.shape[2], e.shape[2]))
            rotation = np.linalg.qr(g)[0][:, : self.grid_dims].astype(np.float32)
            if len(rotations) >= _MAX_ROTATIONS:
                rotations.clear()
            rotations[key] = rotation
        axes = np.matmul(e, rotation).reshape(len(rows), -1)
        z = axes / (self.bin_width * space.spread)
        half = self.grid_levels // 2
        bins = np.clip(np.floor(z) + half, 0, self.grid_levels - 1).astype(np.uint64)
        fine = mix64((bins * self.place[: bins.shape[1]]).sum(axis=1))
        # Coarse cells in units of a typical per-axis deviation: two inputs of the
        # embedding are about ``spread`` apart, sqrt(2 * dims) deviations.
        axis_sd = space.spread / math.sqrt(2.0 * e.shape[2])
        n = min(self.novelty_dims, axes.shape[1])
        coarse = np.floor(axes[:, :n] / (self.novelty_width * axis_sd)).astype(np.int64)
        with np.errstate(over="ignore"):
            ids = (coarse * self.novelty_mult[:n]).sum(axis=1)
        return fine, mix64(ids.view(np.uint64))
