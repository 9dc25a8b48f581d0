"""Checkpoints written before the abuse detectors' states used ``detectors.state.Cooldown``.

Those states named their cooldown field ``quiet_until``; it is ``cooldown_until``
now. ``data/checkpoints_before_cooldown.pickle.z`` was written by that release
(main at the commit it records) running ``old_checkpoint_streams.CASES``: for
each detector, the snapshot taken inside the cooldown of an attack's first
finding, and the findings that release produced before and after it. Restored
here, the state must carry on exactly as the old release did: same findings,
the cooldown neither lost (an early repeat finding) nor stretched.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import pytest
from old_checkpoint_streams import CASES

from detectors.findings import Source, encode_finding
from detectors.registry import build

SAVED = pickle.loads(zlib.decompress(
    (Path(__file__).parent / "data" / "checkpoints_before_cooldown.pickle.z").read_bytes()))


#: Detectors whose findings on their stream changed on purpose since that release.
CHANGED = {
    "extraction.coverage": "issue #14: breadth at matched volume; the stream's 'thief' sends "
    "the same natural inputs as the callers, a heavy benign caller's traffic",
}


def _run(detector, events, first):
    return [encode_finding(f) for i, e in enumerate(events)
            for f in detector.process(e, Source("ml.inference", 0, first + i)) or ()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_old_checkpoint_restores_and_continues_as_the_old_release_did(name):
    params, stream, cut = CASES[name]
    events, saved = stream(), SAVED[name]
    fresh = build(name, params)
    if name in CHANGED:  # restores, and carries on as this release does from there
        before = _run(fresh, events[:cut], 0)
        restored = build(name, params)
        restored.restore(saved["snapshot"])
        assert _run(restored, events[cut:], cut) == _run(fresh, events[cut:], cut)
        assert before == [], CHANGED[name]
        return
    assert _run(fresh, events[:cut], 0) == saved["findings_before"], "the stream is the same"
    restored = build(name, params)
    restored.restore(saved["snapshot"])
    # Within the cooldown of the finding before the snapshot: quiet, then the same findings.
    assert _run(restored, events[cut:], cut) == saved["findings_after"]
    assert saved["findings_after"] == _run(fresh, events[cut:], cut)
