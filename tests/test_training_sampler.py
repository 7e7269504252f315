"""The P x K sampler: P distinct classes, K samples of each, small classes handled."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.training.sampler import PKSampler


def test_batches_are_p_by_k_with_k_per_class():
    labels = [c for c in range(10) for _ in range(6)]
    s = PKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=1)
    for _ in range(50):
        b = s.next_batch().tolist()
        assert len(b) == 12
        counts = Counter(labels[i] for i in b)
        assert len(counts) == 4 and set(counts.values()) == {3}
        assert len(set(b)) == 12  # classes with >= K images: no repeats
        # grouped: K consecutive indices share a class
        assert all(labels[b[i]] == labels[b[i - i % 3]] for i in range(12))


def test_small_classes_excluded_and_reported_and_short_ones_resampled():
    labels = [0] * 5 + [1] * 5 + [2] * 1 + [3] * 2
    s = PKSampler(labels, classes_per_batch=3, samples_per_class=4, seed=0)
    assert s.excluded_classes == [2]
    assert s.num_samples == 12
    for _ in range(20):
        b = s.next_batch().tolist()
        assert 10 not in b  # the lone image of class 2 never appears
        counts = Counter(labels[i] for i in b)
        assert set(counts.values()) == {4} and 2 not in counts


def test_deterministic_and_state_round_trip():
    labels = [c for c in range(8) for _ in range(5)]
    a, b = PKSampler(labels, 3, 2, seed=7), PKSampler(labels, 3, 2, seed=7)
    assert [a.next_batch().tolist() for _ in range(5)] == [b.next_batch().tolist() for _ in range(5)]
    st = a.state_dict()
    nxt = [a.next_batch().tolist() for _ in range(3)]
    c = PKSampler(labels, 3, 2, seed=0)
    c.load_state_dict(st)
    assert [c.next_batch().tolist() for _ in range(3)] == nxt


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        PKSampler([0, 0, 0, 1], 2, 2)
    with pytest.raises(ValueError, match="P >= 2"):
        PKSampler([0, 0, 1, 1], 1, 2)
