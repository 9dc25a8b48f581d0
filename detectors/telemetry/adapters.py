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


def _pyod_model(method: str, seed: int) -> Any:
    # Lazy imports: pyod pulls in scikit-learn; only integrity users pay for it.
    if method == "hbos":
        from pyod.models.hbos import HBOS

        return HBOS()
    if method == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD()
    if method == "iforest":
        from pyod.models.iforest import IForest

        return IForest(random_state=seed, n_estimators=100)
    raise ValueError(f"unknown outlier method {method!r}; one of {OUTLIER_METHODS}")


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
    """Fit and score a tiny model once, so numba compiles pyod's HBOS at start.

    pyod's HBOS is compiled by numba on its first use in a process (seconds);
    calling this when the daemon starts keeps that pause out of the first
    model's reference fit, where it would stall the consumer loop.
    """
    rng = np.random.default_rng(0)
    OutlierModel(method).fit(rng.normal(size=(64, 2)), rng).outlying(rng.normal(size=(4, 2)))
