"""Subject-level splits and the slices each subject gives: a seeded shuffle of the subjects into
train/val/test (:func:`split_subjects`), slices dealt round a split's subjects
(:func:`deal_slices`), and the planes of one subject spread over its brain range (:func:`spread`)."""

from __future__ import annotations

import numpy as np

from lmid.errors import LmidError

SPLITS = ("train", "val", "test")


def split_subjects(subjects: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Seeded shuffle, then largest-remainder counts with >= 1 subject for each positive fraction.

    Lists keep the shuffled order (slices are dealt in that order).
    """
    n = len(subjects)
    need = [s for s in SPLITS if fractions[s] > 0]
    if n < len(need):
        raise LmidError(
            f"{n} usable subject(s) cannot fill the {len(need)} splits {', '.join(need)} "
            f"(one subject at least each); add subjects or set prepare.split.val: 0"
        )
    exact = {s: fractions[s] * n for s in SPLITS}
    counts = {s: int(np.floor(exact[s])) for s in SPLITS}
    for s in sorted(SPLITS, key=lambda s: (counts[s] - exact[s], SPLITS.index(s)))[: n - sum(counts.values())]:
        counts[s] += 1
    for s in need:  # every positive split gets a subject, taken from the largest
        while counts[s] == 0:
            donor = max(SPLITS, key=lambda t: (counts[t] if t != s else -1, -SPLITS.index(t)))
            counts[donor] -= 1
            counts[s] += 1
    order = [subjects[i] for i in np.random.default_rng([seed, 0x5B117]).permutation(n)]
    out, start = {}, 0
    for s in SPLITS:
        out[s] = order[start : start + counts[s]]
        start += counts[s]
    return out


def deal_slices(n: int, order: list[str], capacity) -> dict[str, int]:
    """Deal ``n`` slices one at a time round ``order``; ``capacity(subject)`` is asked lazily."""
    quota = dict.fromkeys(order, 0)
    caps: dict[str, int] = {}
    remaining = n
    while remaining > 0:
        dealt = False
        for sid in order:
            if remaining == 0:
                break
            if sid not in caps:
                caps[sid] = capacity(sid)
            if quota[sid] < caps[sid]:
                quota[sid] += 1
                remaining -= 1
                dealt = True
        if not dealt:
            break
    return quota


def spread(candidates: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """``q`` of the sorted ``candidates``, one from each of ``q`` equal strata (seeded offset)."""
    c = len(candidates)
    if q >= c:
        return candidates.copy()
    pos = np.floor((np.arange(q) + rng.random()) * c / q).astype(int)
    return candidates[np.minimum(pos, c - 1)]
