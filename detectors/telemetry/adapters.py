"""Small adapters over river and pyod, whose APIs change between releases.

:class:`StreamDrift` gives every river drift detector one shape:
``update(value) -> bool`` (True when a change was detected on this value).
river once returned ``(in_drift, in_warning)`` tuples from ``update``; now it
sets ``drift_detected``; both are handled here and nowhere else.

:class:`OutlierModel` wraps a pyod estimator, which is batch-only
(``fit``/``decision_function``): it is fitted on a reference matrix, the
outlier cut is calibrated on held-out reference rows, and it is refitted on a
schedule by its owner, never per event.

>>> drift = StreamDrift("ddm")
>>> [i for i, e in enumerate([0] * 300 + [1] * 50) if drift.update(e)][:1]
[300]
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> model = OutlierModel("hbos", contamination=0.02).fit(rng.normal(size=(2000, 3)), rng)
>>> round(float(model.outlying(rng.normal(size=(5000, 3))).mean()), 2)
0.03
>>> float(model.outlying(rng.normal(6, 1, size=(100, 3))).mean())
1.0
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from detectors.state_codec import state_type

__all__ = ["OUTLIER_METHODS", "STREAM_DRIFT_METHODS", "OutlierModel", "StreamDrift", "warm_up"]

STREAM_DRIFT_METHODS: Final = ("ddm", "eddm", "hddm_a", "hddm_w", "adwin", "page_hinkley")
OUTLIER_METHODS: Final = ("hbos", "ecod", "iforest")


def _river_detector(method: str, params: dict[str, Any]) -> Any:
    from river import drift  # imported lazily: river's import costs ~0.3 s

    # Class names moved between releases (HDDM_A -> HDDMA): try each spelling.
    where: dict[str, tuple[Any, tuple[str, ...]]] = {
        "ddm": (drift.binary, ("DDM",)),
        "eddm": (drift.binary, ("EDDM",)),
        "hddm_a": (drift.binary, ("HDDMA", "HDDM_A")),
        "hddm_w": (drift.binary, ("HDDMW", "HDDM_W")),
        "adwin": (drift, ("ADWIN",)),
        "page_hinkley": (drift, ("PageHinkley",)),
    }
    if method not in where:
        raise ValueError(f"unknown stream drift method {method!r}; one of {STREAM_DRIFT_METHODS}")
    module, names = where[method]
    for name in names:
        cls: Any = getattr(module, name, None)
        if cls is not None:
            return cls(**params)
    raise ValueError(f"this river release has no {method} detector")


@state_type("telemetry.stream_drift")
class StreamDrift:
    """One river drift detector behind ``update(value) -> bool``."""

    def __init__(self, method: str, **params: Any) -> None:
        self.method = method
        self._detector = _river_detector(method, params)
        self.updates = 0

    def update(self, value: float) -> bool:
        self.updates += 1
        result = self._detector.update(value)
        if isinstance(result, tuple):  # river < 0.8: (in_drift, in_warning)
            return bool(result[0])
        return bool(getattr(self._detector, "drift_detected", False))


@state_type("telemetry.numpy_hbos")
class NumpyHBOS:
    """pyod's HBOS (static bins), fitted and scored with numpy alone.

    Same formula and defaults as ``pyod.models.hbos.HBOS`` (``n_bins=10``,
    ``alpha=0.1``, ``tol=0.5``; tests compare the scores with pyod's). pyod
    scores with a numba function that is compiled anew in every process,
    5-6 s here, which would stall the daemon's start and every ``replay``;
    vectorised numpy needs no compilation and scores ~1 us a row.
    """

    def __init__(self, n_bins: int = 10, alpha: float = 0.1, tol: float = 0.5) -> None:
        self.n_bins, self.alpha, self.tol = n_bins, alpha, tol
        self.edges: np.ndarray | None = None
        self.log_density: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> NumpyHBOS:
        columns = [np.histogram(x[:, i], bins=self.n_bins, density=True)
                   for i in range(x.shape[1])]
        self.edges = np.stack([edges for _, edges in columns], axis=1)  # (n_bins+1, d)
        hist = np.stack([h for h, _ in columns], axis=1)  # (n_bins, d)
        self.log_density = np.log2(hist + self.alpha)
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        assert self.edges is not None and self.log_density is not None
        edges, logd, n = self.edges, self.log_density, self.n_bins
        total = np.zeros(len(x))
        for i in range(x.shape[1]):
            col, e, scores = x[:, i], edges[:, i], logd[:, i]
            inds = np.digitize(col, e, right=True)
            width = e[1] - e[0]
            inside = scores[np.clip(inds - 1, 0, n - 1)]
            below_near = (e[0] - col) <= width * self.tol
            above_near = (col - e[-1]) <= width * self.tol
            lowest = scores.min()
            value = np.where(inds == 0, np.where(below_near, scores[0], lowest),
                             np.where(inds == n + 1, np.where(above_near, scores[n - 1], lowest),
                                      inside))
            total += value
        return -total


def _pyod_model(method: str, seed: int) -> Any:
    # Lazy imports: pyod pulls in scikit-learn; only integrity users pay for it.
    if method == "hbos":
        return NumpyHBOS()
    if method == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD()
    if method == "iforest":
        from pyod.models.iforest import IForest

        return IForest(random_state=seed, n_estimators=100)
    raise ValueError(f"unknown outlier method {method!r}; one of {OUTLIER_METHODS}")


@state_type("telemetry.outlier_model")
class OutlierModel:
    """A pyod outlier model with a calibrated cut: rows above it are outlying.

    ``fit`` trains on one half of the reference and sets the cut at the
    ``1 - contamination`` quantile of the other half's scores, so the cut is not
    biased by scoring the training rows themselves. ``null_rate`` is the share
    of held-out rows above the cut (close to ``contamination``).
    """

    def __init__(self, method: str = "hbos", contamination: float = 0.02, seed: int = 0) -> None:
        if method not in OUTLIER_METHODS:
            raise ValueError(f"unknown outlier method {method!r}; one of {OUTLIER_METHODS}")
        if not 0 < contamination < 0.5:
            raise ValueError("contamination must be in (0, 0.5)")
        self.method = method
        self.contamination = contamination
        self.seed = seed
        self._model: Any = None
        self.cut = np.inf
        self.null_rate = contamination
        self.fitted_rows = 0

    def fit(self, x: np.ndarray, rng: np.random.Generator) -> OutlierModel:
        if len(x) < 20:
            raise ValueError("an outlier model needs at least 20 reference rows")
        order = rng.permutation(len(x))
        half = len(x) // 2
        train, held = x[order[:half]], x[order[half:]]
        model = _pyod_model(self.method, self.seed)
        model.fit(train)
        held_scores = np.asarray(model.decision_function(held), dtype=float)
        self.cut = float(np.quantile(held_scores, 1 - self.contamination))
        self.null_rate = float(np.mean(held_scores > self.cut))
        self._model = model
        self.fitted_rows = half
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.decision_function(x), dtype=float)

    def outlying(self, x: np.ndarray) -> np.ndarray:
        """Boolean per row: above the calibrated cut."""
        return self.scores(x) > self.cut


def warm_up(method: str = "hbos") -> None:
    """Fit and score a tiny model once, so first-use costs (imports, any JIT)
    are paid at start, not at the first model's reference fit in the loop."""
    rng = np.random.default_rng(0)
    OutlierModel(method).fit(rng.normal(size=(64, 2)), rng).outlying(rng.normal(size=(4, 2)))
