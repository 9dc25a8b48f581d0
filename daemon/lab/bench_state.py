"""``mlwatchd bench --state``: detector state per tracked principal.

Builds the configured detectors (default: ``config/mlwatchd.yaml``) in one
in-process :class:`~detectors.pipeline.Pipeline`, calibrates one model with a
small population of callers, then lets ``principals`` new principals send
``queries`` inference events each (``features`` wide, interleaved in polled
runs of 2,000 as the daemon feeds them). It prints, per detector and in total,
the bytes per tracked principal:

- ``pickled``: growth of the detector's checkpoint (the state codec,
  :mod:`detectors.state_codec`, as the daemon writes it) divided by the
  principals added;
- ``memory``: growth of a deep size of the detector's state (numpy buffers
  and Python objects) per principal;

and the process's resident memory growth (RSS before/after, after a garbage
collection) per principal. ``--flood N`` instead sends one event from each of
N distinct principals and prints the peak RSS (VmHWM) against
``--max-state-mb`` (``state.max_state_mb``: the cap shared by all detectors).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Source
from detectors.pipeline import DetectorSpec, Pipeline
from detectors.state import deep_size

__all__ = ["run_state_bench", "state_sizes"]

_RUN = 2000  # events per polled run
_STAGGER = 32  # principals start up to this many steps apart
_T0 = 1_767_225_600.0


def rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def state_sizes(pipeline: Pipeline) -> dict[str, tuple[int, int]]:
    """Detector name -> (checkpoint bytes, deep in-memory bytes), summed over partitions;
    under ``""`` the deep size of all of them together (what they share counted once)."""
    out: dict[str, tuple[int, int]] = {"": (0, deep_size([
        [d.__dict__[k] for k in d.state_fields if k in d.__dict__]
        for _, d in pipeline.detectors()]))}
    for _, d in pipeline.detectors():
        pickled = len(d.snapshot())
        fields = [d.__dict__[k] for k in d.state_fields if k in d.__dict__]
        mem = deep_size(fields)
        p, m = out.get(d.name, (0, 0))
        out[d.name] = (p + pickled, m + mem)
    return out


def _events(
    rng: np.random.Generator, principals: list[str], queries: int, features: int, t: float
) -> Iterator[InferenceEvent]:
    """``queries`` events from each principal, interleaved, near its own centre.

    Principal i starts ``i % 32`` steps late, so their batches (32 queries)
    fill at different moments as in real traffic, not all in one poll.
    """
    centres = rng.normal(size=(len(principals), features))
    lag = np.arange(len(principals)) % _STAGGER
    n = 0
    for step in range(queries + _STAGGER - 1):
        q = step - lag
        sending = np.flatnonzero((q >= 0) & (q < queries))
        noise = rng.normal(scale=0.5, size=(len(sending), features))
        x = (centres[sending] + noise).round(4)
        for k, i in enumerate(sending.tolist()):
            row = x[k].tolist()
            yield InferenceEvent(
                ts=t + n * 0.01, model_id="bench-model", request_id=f"{q[i]}-{i}",
                principal=principals[i], features=row, prediction=int(row[0] > 0),
                probabilities=[0.3, 0.7] if row[1] > 0 else [0.8, 0.2],
            )
            n += 1


def _feed(pipeline: Pipeline, events: Iterator[InferenceEvent], offset: int) -> int:
    run: list[tuple[InferenceEvent, Source]] = []
    for event in events:
        run.append((event, Source("ml.inference", 0, offset)))
        offset += 1
        if len(run) == _RUN:
            pipeline.process_many("inference", 0, run)
            run = []
    if run:
        pipeline.process_many("inference", 0, run)
    return offset


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def run_state_bench(
    specs: list[DetectorSpec],
    *,
    principals: int = 100_000,
    queries: int = 40,
    features: int = 64,
    flood: int = 0,
    cap_mb: float | None = None,
    seed: int = 1,
) -> int:
    """Print bytes per tracked principal (or, with ``flood``, peak RSS); 0 on success."""
    rng = np.random.default_rng(seed)
    pipeline = Pipeline(specs, max_state_bytes=None if cap_mb is None else int(cap_mb * 2**20))
    started = time.perf_counter()
    # Calibration: the model's scale and the peer-calibrated thresholds.
    offset = _feed(pipeline, _events(rng, [f"cal-{i}" for i in range(20)], 600, features, _T0), 0)
    gc.collect()
    before = state_sizes(pipeline)
    rss0 = rss_bytes()
    t = _T0 + 20 * 600 * 0.01
    if flood:
        names = (f"flood-{i}" for i in range(flood))
        step = 5_000  # the generator's own arrays (step x features floats) stay small
        sent = 0
        while sent < flood:
            chunk = [next(names) for _ in range(min(step, flood - sent))]
            offset = _feed(pipeline, _events(rng, chunk, 1, features, t), offset)
            t += len(chunk) * 0.01
            sent += len(chunk)
        gc.collect()
        print(f"flood: {flood:,} distinct principals, 1 event each, {features} features, "
              f"{time.perf_counter() - started:.0f} s")
        print(f"  RSS after calibration {_mib(rss0)}, now {_mib(rss_bytes())}, "
              f"peak (VmHWM) {_mib(peak_rss_bytes())}")
        if cap_mb is not None:
            print(f"  state.max_state_mb: {cap_mb:g} (entity tables only; RSS also holds the "
                  f"interpreter, libraries and per-model state)")
        after = state_sizes(pipeline)
        for name in sorted(after):
            if not name:
                continue
            stats = _stats(pipeline, name)
            held, gone = stats.get("entities", 0), stats.get("evicted_total", 0)
            print(f"  {name:28s} state {_mib(after[name][1]):>12s}  entities "
                  f"{held:>9,.0f}  evicted {gone:>9,.0f}")
        return 0
    who = [f"p-{i:07d}" for i in range(principals)]
    _feed(pipeline, _events(rng, who, queries, features, t), offset)
    gc.collect()
    rss1 = rss_bytes()
    after = state_sizes(pipeline)
    elapsed = time.perf_counter() - started
    print(f"state per tracked principal: {principals:,} principals x {queries} queries, "
          f"{features} features, {len(specs)} detectors, {elapsed:.0f} s")
    print(f"  {'detector':28s} {'pickled B/p':>12s} {'memory B/p':>12s}")
    tot_p = tot_m = 0.0
    for name in sorted(after):
        if not name:
            continue
        p = (after[name][0] - before.get(name, (0, 0))[0]) / principals
        m = (after[name][1] - before.get(name, (0, 0))[1]) / principals
        tot_p += p
        tot_m += m
        if abs(p) >= 1 or abs(m) >= 1:
            print(f"  {name:28s} {p:12,.0f} {m:12,.0f}")
    print(f"  {'total':28s} {tot_p:12,.0f} {tot_m:12,.0f}")
    shared = (after[""][1] - before[""][1]) / principals
    print(f"  {'all together':28s} {tot_p:12,.0f} {shared:12,.0f}   (memory: shared rows once)")
    print(f"  RSS growth: {(rss1 - rss0) / principals:,.0f} B per principal "
          f"({_mib(rss0)} -> {_mib(rss1)})")
    return 0


def _stats(pipeline: Pipeline, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, d in pipeline.detectors():
        if d.name == name:
            for k, v in d.stats().items():
                out[k] = out.get(k, 0.0) + float(v)
    return out
