"""Compact per-principal state (issue #16) and its benchmark, ``mlwatchd bench --state``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from daemon.lab.bench_state import deep_size, run_state_bench
from detectors.pipeline import DetectorSpec


def test_deep_size_counts_numpy_buffers_and_views_once() -> None:
    a = np.zeros(1000, dtype=np.float32)
    assert deep_size(a) >= 4000
    assert deep_size([a, a, a[:10]]) < deep_size(a) + 1000  # views and repeats: once


def test_state_bench_prints_bytes_per_principal(capsys: pytest.CaptureFixture[str]) -> None:
    specs = [DetectorSpec("probing.stateful_knn"), DetectorSpec("volume.principal_rate")]
    assert run_state_bench(specs, principals=40, queries=40, features=16) == 0
    out = capsys.readouterr().out
    knn = re.search(r"probing\.stateful_knn\s+([\d,]+)\s+([\d,]+)", out)
    assert knn is not None, out
    pickled, memory = (int(v.replace(",", "")) for v in knn.groups())
    # 40 queries: one judged batch in the buffer (32 rows x 16 dims float32) at least
    assert pickled >= 32 * 16 * 4 and memory >= 32 * 16 * 4
    assert "RSS growth" in out and re.search(r"total\s+[\d,]+", out)
