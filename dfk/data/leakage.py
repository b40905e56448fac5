"""Format-leakage check: can the file container alone tell fakes from reals?

A known trap in deepfake datasets: fakes and reals differ in file format, JPEG quality, file size
or dimensions, and a model learns the container instead of the forgery. For each cue a shallow
classifier (a depth-2 decision tree, cross-validated balanced accuracy) tries to separate the classes from that cue
alone; a cue that reaches more than :data:`LEAK_ACCURACY` is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfk.data.scan import DatasetIndex

#: Accuracy above which one cue alone is said to separate the classes.
LEAK_ACCURACY = 0.70
CUES = ("format", "jpeg_quality", "file_bytes", "width", "height", "mode")


@dataclass
class CueReport:
    cue: str
    accuracy: float  # cross-validated balanced accuracy of a shallow classifier on this cue alone
    real: dict  # summary of the cue's distribution among reals
    fake: dict

    @property
    def leaks(self) -> bool:
        return self.accuracy > LEAK_ACCURACY


def _summary(values: list) -> dict:
    if values and isinstance(values[0], str):
        uniq, counts = np.unique(values, return_counts=True)
        return {str(u): int(c) for u, c in zip(uniq, counts)}
    a = np.asarray(values, dtype=float)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())} if len(a) else {}


def check_leakage(index: DatasetIndex, max_samples: int = 20000, seed: int = 0) -> list[CueReport]:
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    items = [(p, y) for split in index.samples for p, y in index.samples[split] if p in index.info]
    rng = np.random.default_rng(seed)
    if len(items) > max_samples:
        items = [items[i] for i in rng.choice(len(items), max_samples, replace=False)]
    y = np.array([label for _, label in items])
    reports = []
    for cue in CUES:
        raw = [getattr(index.info[p], cue) for p, _ in items]
        if isinstance(raw[0], str):
            codes = {v: i for i, v in enumerate(sorted(set(raw)))}
            x = np.array([codes[v] for v in raw], float)[:, None]
        else:
            x = np.array(raw, float)[:, None]
        folds = int(min(5, np.bincount(y, minlength=2).min()))
        acc = 0.5  # balanced accuracy of a constant guess
        if folds >= 2 and len(np.unique(x)) > 1:
            tree = DecisionTreeClassifier(max_depth=2, random_state=0)
            acc = float(cross_val_score(tree, x, y, cv=folds, scoring="balanced_accuracy").mean())
        reports.append(CueReport(cue, acc, _summary([r for r, t in zip(raw, y) if t == 0]),
                                 _summary([r for r, t in zip(raw, y) if t == 1])))
    return reports
