"""The drift statistics on synthetic embeddings: unit vectors around a few topic centres,
as answers' embeddings cluster by subject. Loose bounds: each rate is an estimate over a
few dozen seeded resamples."""

from __future__ import annotations

import numpy as np
import pytest

from guarita.ops.drift import (
    DriftLevel,
    DriftThresholds,
    compare,
    false_alarm_rate,
    grade,
)

DIMS = 64


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


class Behaviour:
    """Answers drawn around ``topics`` centres; ``shift`` moves every answer along one
    direction (a change of tone that touches every subject)."""

    def __init__(self, seed: int = 0, topics: int = 12) -> None:
        rng = np.random.default_rng(seed)
        self.centres = unit(rng.normal(size=(topics, DIMS)))
        self.direction = unit(rng.normal(size=(1, DIMS)))[0]

    def sample(self, n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
        centres = self.centres[rng.integers(0, len(self.centres), n)]
        return unit(centres + 0.5 * rng.normal(size=(n, DIMS)) + shift * self.direction)


def test_baseline_against_baseline_rarely_warns() -> None:
    pool = Behaviour().sample(400, np.random.default_rng(1))
    rate = false_alarm_rate(pool, 40, splits=60, seed=3, permutations=100)
    assert rate <= 0.12  # the bound is 0.05; 60 splits leave room for chance
    monitor = false_alarm_rate(pool, 40, splits=60, seed=3, permutations=100,
                               level=DriftLevel.MONITOR)  # fmt: skip
    assert monitor <= 0.2


def test_a_planted_shift_is_found() -> None:
    behaviour, rng = Behaviour(), np.random.default_rng(2)
    levels = [compare(behaviour.sample(40, rng), behaviour.sample(40, rng, shift=1.0),
                      permutations=100, seed=i).level for i in range(12)]  # fmt: skip
    assert sum(level >= DriftLevel.WARNING for level in levels) >= 11


def test_a_large_shift_is_urgent_and_scored_near_one() -> None:
    behaviour, rng = Behaviour(), np.random.default_rng(4)
    report = compare(behaviour.sample(40, rng), behaviour.sample(40, rng, shift=3.0),
                     permutations=100)  # fmt: skip
    assert report.level == DriftLevel.URGENT_ROLLBACK
    assert report.score > 0.8 and report.accuracy > 0.9
    assert report.mmd_p == report.classifier_p == pytest.approx(1 / 101)


def test_the_same_seed_gives_the_same_report() -> None:
    behaviour, rng = Behaviour(), np.random.default_rng(5)
    a, b = behaviour.sample(30, rng), behaviour.sample(50, rng, shift=0.3)
    assert compare(a, b, seed=9) == compare(a, b, seed=9)
    assert compare(a, b, seed=9).as_dict()["level"] in {level.label for level in DriftLevel}


def test_windows_too_small_or_of_other_widths_are_refused() -> None:
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="at least 8"):
        compare(rng.normal(size=(7, 8)), rng.normal(size=(20, 8)))
    with pytest.raises(ValueError, match="same dims"):
        compare(rng.normal(size=(20, 8)), rng.normal(size=(20, 9)))


def test_grades_follow_the_document() -> None:
    t = DriftThresholds(alpha=0.05, urgent_score=0.3)
    assert grade(0.5, 0.5, 0.0, t) == DriftLevel.NO_ACTION
    assert grade(0.01, 0.5, 0.0, t) == grade(0.5, 0.01, 0.4, t) == DriftLevel.MONITOR
    assert grade(0.01, 0.01, 0.29, t) == DriftLevel.WARNING
    assert grade(0.01, 0.01, 0.3, t) == DriftLevel.URGENT_ROLLBACK
