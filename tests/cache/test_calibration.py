"""The threshold calibration on synthetic scores, and the shipped labelled pairs."""

from __future__ import annotations

from pathlib import Path

from guarita.cache.calibration import (
    PAIR_SOURCES,
    ScoredPair,
    build_pairs,
    calibrate,
    evaluate,
    load_pairs,
    wilson_upper,
)

DATA = Path(__file__).parent / "data"


def test_wilson_upper_bound() -> None:
    assert wilson_upper(0, 1000) < 0.003
    assert 0.01 < wilson_upper(5, 500) < 0.03  # above the point estimate of 1 %
    assert wilson_upper(0, 0) == 1.0


def test_picks_the_lowest_threshold_meeting_the_target() -> None:
    traps = [ScoredPair("negation", 0.1 + i * 0.0001, True) for i in range(2000)]
    traps.append(ScoredPair("negation", 0.9, True))  # one served trap above 0.8
    traps.append(ScoredPair("number", 0.99, False))  # rejected by the verifier: ignored
    positives = [ScoredPair("paraphrase", s, True) for s in (0.5, 0.7, 0.85, 0.95)]
    result = calibrate(traps + positives, target=0.01, floor_kinds=())
    assert result.feasible
    # the bound allows a few of the 2,002 traps served: just under the top of the low ones
    assert 0.29 < result.threshold <= 0.3
    assert result.trap_rate_upper <= 0.01 < wilson_upper(result.traps_served + 5, 2002)
    assert result.positives_served == 4


def test_infeasible_target_keeps_no_trap_served() -> None:
    pairs = [ScoredPair("entity", 0.8, True), ScoredPair("paraphrase", 0.9, True)]
    result = calibrate(pairs, target=0.01)
    assert not result.feasible
    assert result.traps_served == 0
    assert 0.8 < result.threshold <= 0.9


def test_unrelated_floor_ignores_the_verifier() -> None:
    pairs = [ScoredPair("unrelated", 0.6, False)] + [
        ScoredPair("negation", 0.01 * i, False) for i in range(100)
    ]
    pairs.append(ScoredPair("paraphrase", 0.95, True))
    assert calibrate(pairs).threshold > 0.6


def test_evaluate_counts_per_kind() -> None:
    pairs = [ScoredPair("scope", 0.9, True), ScoredPair("scope", 0.9, False)]
    e = evaluate(pairs, 0.5)
    assert e.rate("scope") == 0.5


def test_shipped_pairs_match_their_source() -> None:
    source = "\n".join((DATA / name).read_text() for name in PAIR_SOURCES)
    built = build_pairs(source)
    assert built == load_pairs(DATA / "pairs.jsonl")
    kinds = {p.kind for p in built}
    assert kinds >= {"paraphrase", "near_repeat", "negation", "number", "date", "entity",
                     "scope", "swap", "unrelated"}  # fmt: skip
    assert {p.split for p in built} == {"calibration", "heldout"}
    # a block goes whole to one split
    split_of = {}
    for p in built:
        if p.kind != "unrelated":
            assert split_of.setdefault(p.query, p.split) == p.split
