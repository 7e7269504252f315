"""P x K class-balanced batch sampler: P classes per batch, K samples of each."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch

log = logging.getLogger(__name__)


class PKSampler:
    """Yields batches of sample indices: ``P`` distinct classes, ``K`` samples of each (P*K indices).

    Classes with fewer than 2 samples cannot give a positive pair and are excluded (listed in
    ``excluded_classes``). A class with fewer than K samples (but >= 2) is sampled with replacement.
    The random state is a ``torch.Generator`` whose state is saved with checkpoints (``state_dict``).
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, samples_per_class: int, seed: int = 0) -> None:
        if classes_per_batch < 2 or samples_per_class < 2:
            raise ValueError("a P x K batch needs P >= 2 classes and K >= 2 samples per class")
        by_class: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            by_class.setdefault(int(lab), []).append(i)
        self.excluded_classes = sorted(c for c, idx in by_class.items() if len(idx) < 2)
        if self.excluded_classes:
            log.warning("%d class(es) with fewer than 2 images left out of training: %s",
                        len(self.excluded_classes), self.excluded_classes[:20])
        self.classes = sorted(c for c, idx in by_class.items() if len(idx) >= 2)
        if len(self.classes) < 2:
            raise ValueError(f"training needs at least 2 classes with 2 or more images each; found {len(self.classes)}")
        self._members = [torch.tensor(by_class[c], dtype=torch.long) for c in self.classes]
        self.P = min(classes_per_batch, len(self.classes))
        if self.P < classes_per_batch:
            log.warning("only %d usable classes: batches take %d classes, not %d", len(self.classes), self.P,
                        classes_per_batch)
        self.K = samples_per_class
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def batch_size(self) -> int:
        return self.P * self.K

    @property
    def num_samples(self) -> int:
        """Number of samples that can be drawn (the excluded classes left out)."""
        return int(sum(len(m) for m in self._members))

    def next_batch(self) -> torch.Tensor:
        """One batch: (P*K,) long tensor, grouped class by class (K consecutive indices per class)."""
        g = self.generator
        chosen = torch.randperm(len(self.classes), generator=g)[: self.P].tolist()
        parts = []
        for c in chosen:
            m = self._members[c]
            if len(m) >= self.K:
                pick = torch.randperm(len(m), generator=g)[: self.K]
            else:
                pick = torch.randint(len(m), (self.K,), generator=g)
            parts.append(m[pick])
        return torch.cat(parts)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
