"""Longer evaluation of the abuse detectors (not a test): ``python tests/abuse/evaluate_abuse.py``.

For each seed: 40 benign principals (held-out digits, ~4 h), one HopSkipJump
and one BoundaryAttack run (ART), a Jacobian-augmentation thief and a fast and
a slow knockoff thief, interleaved in event time. Prints, per detector and
attacker, the number of the attacker's own queries at the first finding (or
"-"), the number of benign principals with a finding, and the knockoff copy's
accuracy at the moment the first extraction finding fired.
"""

from __future__ import annotations

import argparse
import warnings

import traffic as T

from detectors.abuse import DETECTORS
from detectors.testing import sourced

ATTACKERS = ("attacker-hsj", "attacker-boundary", "thief-jbda", "thief-knockoff", "thief-slow")


def run_seed(seed: int) -> tuple[dict[str, dict[str, int]], dict[str, int], list[float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benign = T.benign_events(seed=5 + seed)
        hsj = T.hopskipjump_events(t0=T.T0 + 3600, seed=1 + 10 * seed)
        bnd = T.boundary_events(t0=T.T0 + 5400, seed=2 + 10 * seed)
        jbda = T.jbda_events(t0=T.T0 + 1800, seed=3 + 10 * seed)
        fast, accuracy = T.knockoff_events(t0=T.T0 + 1200, seed=4 + 10 * seed, fit_every=100)
        slow, _ = T.knockoff_events(
            "thief-slow", t0=T.T0 + 600, n_queries=1200, gap=10.0, seed=6 + 10 * seed
        )
    stream = T.interleave(benign, hsj, bnd, jbda, fast, slow)
    first: dict[str, dict[str, int]] = {}
    false: dict[str, int] = {}
    for cls in DETECTORS:
        det = cls()
        sent: dict[str, int] = {}
        hits: dict[str, int] = {}
        for event, source in sourced(stream):
            sent[event.principal] = sent.get(event.principal, 0) + 1
            for f in det.process(event, source) or ():
                hits.setdefault(f.entity.id, sent[event.principal])
        first[cls.name] = hits
        false[cls.name] = sum(1 for who in hits if who not in ATTACKERS)
    return first, false, accuracy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    for seed in range(args.seeds):
        first, false, accuracy = run_seed(seed)
        print(f"\nseed {seed}: attacker queries at first finding; benign principals flagged")
        print(f"  {'detector':24s} " + " ".join(f"{a:>17s}" for a in ATTACKERS) + "  benign")
        for name, hits in first.items():
            cells = " ".join(f"{hits.get(a, '-')!s:>17s}" for a in ATTACKERS)
            print(f"  {name:24s} {cells}  {false[name]}")
        at = first["extraction.coverage"].get("thief-knockoff")
        if at and at >= 100:
            v = T.victim()
            victim_acc = float((v.model.predict(v.x_test) == v.y_test).mean())
            copy_acc = accuracy[min(at // 100, len(accuracy)) - 1]
            print(
                f"  knockoff copy's test accuracy when coverage fired (~{at} queries): "
                f"{copy_acc:.3f} (victim {victim_acc:.3f})"
            )


if __name__ == "__main__":
    main()
