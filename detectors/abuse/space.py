"""A model's input space as fixed numeric vectors, shared by the abuse detectors.

Inference events carry features as a list of floats or as a dict of name ->
number / string / None. :class:`ModelSpace` fixes one layout per model from the
first event it sees (list length, or the sorted dict keys), turns every later
event into a row of that layout cheaply (no numpy per event), and, once it has
seen ``calibration_rows`` rows, freezes a per-feature centre and scale and a
seeded random projection to at most ``max_dims`` dimensions. Batches of rows are
then standardised (and projected) in one numpy call.

With ``robust=True`` the scale is robust and per feature: centre the median,
scale the interquartile range / 1.349 (the standard deviation if that is 0, 1
if both are), and each standardised value z is compressed to
sign(z) * log(1 + |z|) before projecting. Distances are then free of each
feature's unit and tail: a million-scale amount, a heavy-tailed count and a
0/1 flag weigh alike, and one extreme value cannot dominate (the plain scale
divides by the standard deviation floored at the features' RMS spread, so a
few million-scale features decide every distance).

Strings (categorical values) become a stable number in [0, 4): equal categories
are at distance 0, different ones at a random but fixed distance. None and
non-finite numbers become the feature's centre (0 after standardising);
magnitudes beyond ``detectors.limits.FEATURE_LIMIT`` are clipped to it.

>>> space = ModelSpace({"age": 30, "plan": "gold", "x": None}, calibration_rows=2)
>>> space.names, space.row({"age": 40, "plan": "gold", "x": 1.5})[0]
(('age', 'plan', 'x'), 40.0)
>>> space.row([1.0, 2.0])[2] != space.row([1.0, 2.0])[2]   # missing -> NaN
True
"""

from __future__ import annotations

import math
import operator
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from detectors.limits import clip_features
from detectors.state_codec import state_type

__all__ = ["ModelSpace", "as_matrix", "pairwise_sq_dists", "stable_seed", "stacked_sq_dists"]

_NAN: Final = float("nan")


def stable_seed(*parts: object) -> int:
    """A seed derived from ``parts`` that is the same in every process (unlike hash())."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def _number(value: Any) -> float:
    if value is None:
        return _NAN
    if isinstance(value, str):
        return (zlib.crc32(value.encode()) & 0xFFFF) / 16384.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NAN


#: The last batches converted to matrices: [(the row objects, the float64 matrix)].
#: Turning Python floats into an array is the largest per-event cost of the
#: vector detectors; they batch the same principal's same events at the same
#: moment (two batch sizes among them, hence two slots), so the first converts
#: and the others reuse its (read-only) result. Keyed by the identity of the row
#: objects, which the memo keeps alive, so a hit is always the same data; a miss
#: only costs the conversion.
_RECENT_BATCHES: list[tuple[tuple[object, ...], np.ndarray]] = []


def as_matrix(rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``rows`` as a read-only float64 matrix (memoised for the last two batches).

    >>> a = [[1.0, 2.0], [3.0, 4.0]]
    >>> as_matrix(a) is as_matrix(list(a)), as_matrix(a).shape
    (True, (2, 2))
    """
    n = len(rows)
    for key, matrix in _RECENT_BATCHES:
        if len(key) == n and all(map(operator.is_, key, rows)):
            return matrix
    matrix = np.array(rows, dtype=np.float64)
    clip_features(matrix)  # 1e308 from a caller must not overflow distances
    matrix.flags.writeable = False
    _RECENT_BATCHES.insert(0, (tuple(rows), matrix))
    del _RECENT_BATCHES[2:]
    return matrix


def pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (clipped at 0).

    >>> pairwise_sq_dists(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[25.,  0.]])
    """
    d: np.ndarray = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d, 0.0, out=d)
    return d


def stacked_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`pairwise_sq_dists` for stacks: ``a`` (m, n, d), ``b`` (m, l, d) -> (m, n, l).

    Each slice is computed exactly as the lone pair would be (numpy multiplies
    stacked matrices slice by slice), so a batch judged with others gives the
    same distances as judged alone.

    >>> a = np.array([[[0.0, 0.0]], [[1.0, 1.0]]])
    >>> stacked_sq_dists(a, np.array([[[3.0, 4.0]], [[1.0, 1.0]]])).ravel().tolist()
    [25.0, 0.0]
    """
    d: np.ndarray = (
        (a * a).sum(-1)[..., :, None]
        + (b * b).sum(-1)[..., None, :]
        - 2.0 * np.matmul(a, b.transpose(0, 2, 1))
    )
    np.maximum(d, 0.0, out=d)
    return d


@state_type("abuse.model_space")
class ModelSpace:
    """Fixed layout, frozen scale and projection of one model's feature vectors."""

    __slots__ = (
        "_calib",
        "_calib_target",
        "_offset",
        "_weights",
        "centre",
        "dim",
        "max_dims",
        "names",
        "proj",
        "robust",
        "scale",
        "seed",
        "spread",
    )

    def __init__(
        self,
        first: Sequence[float] | Mapping[str, Any],
        *,
        calibration_rows: int = 256,
        max_dims: int = 32,
        max_features: int = 4096,
        seed: int = 0,
        robust: bool = False,
    ) -> None:
        if isinstance(first, Mapping):
            self.names: tuple[str, ...] | None = tuple(sorted(first))[:max_features]
            self.dim = len(self.names)
        else:
            self.names = None
            self.dim = min(len(first), max_features)
        self.dim = max(self.dim, 1)
        self.max_dims = max_dims
        self.seed = seed
        self.robust = robust
        self._calib: list[Sequence[float]] | None = []
        self._calib_target = calibration_rows
        self.centre: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.proj: np.ndarray | None = None
        self._weights: np.ndarray | None = None  # diag(1/scale) @ proj, float32
        self._offset: np.ndarray | None = None  # (centre/scale) @ proj
        #: Median distance between two calibration rows in the embedded space:
        #: the yardstick that makes distance thresholds unit-free.
        self.spread = 1.0

    @property
    def ready(self) -> bool:
        return self.centre is not None

    def row(self, features: Sequence[float] | Mapping[str, Any]) -> Sequence[float]:
        """The event's features in this model's layout (floats, NaN for missing)."""
        names = self.names
        if names is not None and isinstance(features, Mapping):
            get = features.get
            return [v if type(v) is float else _number(v) for v in map(get, names)]
        if isinstance(features, Mapping):  # layout is positional, event is a dict
            values: list[Any] = [features[k] for k in sorted(features)]
            values = [_number(v) for v in values]
        else:
            if len(features) == self.dim:
                return features
            values = list(features)
        if len(values) >= self.dim:
            return values[: self.dim]
        return values + [_NAN] * (self.dim - len(values))

    def observe(self, row: Sequence[float]) -> None:
        """Collect a calibration row; freeze centre, scale and projection when enough."""
        calib = self._calib
        if calib is None:
            return
        calib.append(row)
        if len(calib) >= self._calib_target:
            x = np.array(calib, dtype=np.float64)
            clip_features(x)
            self._freeze(x)
            self._calib = None

    def _freeze(self, x: np.ndarray) -> None:
        with warnings.catch_warnings():  # all-missing columns: centre 0, spread floored
            warnings.simplefilter("ignore", RuntimeWarning)
            centre = np.nanmedian(x, axis=0) if np.isnan(x).any() else x.mean(axis=0)
            std = np.nan_to_num(np.nanstd(x, axis=0))
            if self.robust:
                q1, centre, q3 = np.nanpercentile(x, [25, 50, 75], axis=0)
                iqr = np.nan_to_num(q3 - q1) / 1.349
        centre = np.nan_to_num(centre)
        self.centre = centre
        if self.robust:
            self.scale = np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0))
        else:
            rms = math.sqrt(float((std * std).mean())) or 1.0
            # A floor at the features' RMS spread: near-constant features (image
            # borders, rare flags) do not turn tiny changes into huge distances.
            self.scale = np.maximum(std, rms)
        if self.dim > self.max_dims:
            rng = np.random.default_rng(self.seed)
            self.proj = rng.normal(0.0, 1.0 / math.sqrt(self.max_dims), (self.dim, self.max_dims))
            if not self.robust:  # standardise and project in one product: x @ W - o
                self._weights = (self.proj / self.scale[:, None]).astype(np.float32)
                self._offset = ((self.centre / self.scale) @ self.proj).astype(np.float32)
        z = self.embed(x[:256])
        d = np.sqrt(pairwise_sq_dists(z, z)[np.triu_indices(len(z), 1)])
        d = d[d > 0]
        self.spread = float(np.median(d)) if d.size else 1.0

    def standardise(self, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Rows centred and scaled (missing -> 0), not projected. Requires ``ready``."""
        x: np.ndarray = (as_matrix(rows) - self.centre) / self.scale
        if not np.isfinite(x).all():
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def scaled(self, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """:meth:`standardise`, compressed as :meth:`embed` does when ``robust``; not projected."""
        z = self.standardise(rows)
        if self.robust:
            z = np.sign(z) * np.log1p(np.abs(z))
        return z

    def embed(self, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Standardised rows projected to at most ``max_dims`` dims (float32)."""
        one: np.ndarray = self.embed_stack(rows, len(rows))[0]
        return one

    def embed_stack(self, rows: Sequence[Sequence[float]] | np.ndarray, block: int) -> np.ndarray:
        """:meth:`embed` of consecutive blocks of ``block`` rows, shape (blocks, block, dims).

        Each block is projected by its own (stacked) product, so its result does
        not depend on which other blocks were embedded with it.
        """
        if self.robust:
            z = self.scaled(rows)
            if self.proj is not None:
                z = z @ self.proj
            out32: np.ndarray = z.reshape(-1, block, z.shape[1]).astype(np.float32)
            return out32
        if self._weights is None:
            x = self.standardise(rows)
            flat: np.ndarray = x.reshape(-1, block, x.shape[1]).astype(np.float32)
            return flat
        raw = as_matrix(rows).reshape(-1, block, self.dim)
        # Blocks without missing values: standardise and project in one product.
        fast = np.isfinite(raw.reshape(len(raw), -1).sum(axis=1))
        if fast.all():
            return self._project_raw(raw)
        out = np.empty((len(raw), block, self._weights.shape[1]), dtype=np.float32)
        out[fast] = self._project_raw(raw[fast])
        slow = raw[~fast]
        x = self.standardise(slow.reshape(-1, self.dim)).reshape(slow.shape)
        assert self.proj is not None
        out[~fast] = np.matmul(x, self.proj)
        return out

    def _project_raw(self, raw: np.ndarray) -> np.ndarray:
        assert self._weights is not None
        z: np.ndarray = np.matmul(raw.astype(np.float32), self._weights)
        z -= self._offset
        return z
