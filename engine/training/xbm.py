"""Cross-Batch Memory (Wang et al., CVPR 2020): a ring buffer of past embeddings used as extra
positives and negatives for the current batch's anchors.

The buffer is keyed by sample index: enqueueing a sample that is already in memory empties its
older entry, so an old and a new embedding of one sample never coexist.
"""

from __future__ import annotations

import torch

from engine.training.losses import BaseMetricLoss, LossOutput


class CrossBatchMemory:
    """Ring buffer: ``emb`` (size, D), ``labels`` (size,), ``ids`` (size,); an empty slot has id and
    label -1. ``num_samples`` bounds the sample indices (the training-set size) for the id -> slot table.

    Each batch of B takes the next B slots (the oldest entries leave); an older entry of a sample
    in the batch is emptied, and of a sample repeated inside the batch only the last occurrence is
    kept. Every step is a fixed-shape tensor operation: nothing waits for the GPU.
    """

    def __init__(self, size: int, dim: int, num_samples: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if size < 1:
            raise ValueError("memory size must be >= 1")
        self.size, self.dim, self.num_samples = int(size), int(dim), int(num_samples)
        self.emb = torch.zeros(self.size, self.dim, device=device, dtype=dtype)
        # one spare entry at the end of the id/label tables and of the id -> slot table: the target
        # of writes that must go nowhere
        self._labels = torch.full((self.size + 1,), -1, dtype=torch.long, device=device)
        self._ids = torch.full((self.size + 1,), -1, dtype=torch.long, device=device)
        self._slot_of = torch.full((self.num_samples + 1,), -1, dtype=torch.long, device=device)
        self.ptr = 0

    # the tables without their spare entry
    labels = property(lambda self: self._labels[: self.size])
    ids = property(lambda self: self._ids[: self.size])
    slot_of = property(lambda self: self._slot_of[: self.num_samples])

    @property
    def fill(self) -> int:
        """Number of occupied slots (reads the device: for reports, not for the training step)."""
        return int((self.ids >= 0).sum())

    def fill_tensor(self) -> torch.Tensor:
        """The same as a 0-dim tensor on the memory's device (no host sync)."""
        return (self.ids >= 0).sum()

    @torch.no_grad()
    def enqueue(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, check: bool = True) -> None:
        """Store (detached) embeddings (B, D) with their labels and sample ids (B,) in [0, num_samples).
        ``check=False`` skips the range check, which reads the ids back (a host sync on a GPU)."""
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"memory expects (B, {self.dim}) embeddings, got {tuple(emb.shape)}")
        if labels.shape != ids.shape or ids.shape[0] != emb.shape[0]:
            raise ValueError("labels and ids must be (B,) like the embeddings")
        if check and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_samples):
            raise ValueError(f"sample ids must be in [0, {self.num_samples})")
        dev = self._ids.device
        emb, labels, ids = emb.detach().to(self.emb), labels.to(dev), ids.to(dev)
        if ids.shape[0] > self.size:  # a batch larger than the memory: its last `size` entries
            emb, labels, ids = emb[-self.size:], labels[-self.size:], ids[-self.size:]
        b = ids.shape[0]
        if b == 0:
            return
        spare_slot, spare_id = self.size, self.num_samples
        order = torch.arange(b, device=dev)
        last = torch.full((self.num_samples + 1,), -1, dtype=torch.long, device=dev)
        last.scatter_reduce_(0, ids, order, reduce="amax")
        keep = last[ids] == order                                   # last occurrence of each sample
        # 1. empty the older entries of these samples
        old = self._slot_of[ids]
        old = torch.where(old >= 0, old, spare_slot)
        self._ids[old] = -1
        self._labels[old] = -1
        # 2. the next b slots: their current samples leave
        slots = (self.ptr + order) % self.size
        leaving = self._ids[slots]
        self._slot_of[torch.where(leaving >= 0, leaving, spare_id)] = -1
        # 3. write the batch (repeats inside it as empty slots)
        self.emb[slots] = emb
        self._labels[slots] = torch.where(keep, labels, -1)
        self._ids[slots] = torch.where(keep, ids, -1)
        self._slot_of[torch.where(keep, ids, spare_id)] = slots
        self._slot_of[spare_id] = -1
        self.ptr = (self.ptr + b) % self.size

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(emb (F, D), labels (F,), ids (F,)) of the occupied slots (a host sync: for inspection)."""
        used = self.ids >= 0
        return self.emb[used], self.labels[used], self.ids[used]

    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(emb (size, D), labels (size,), ids (size,)) with empty slots labelled -1: what the loss reads."""
        return self.emb, self.labels, self.ids

    def state_dict(self) -> dict:
        return {"emb": self.emb.cpu(), "labels": self.labels.cpu(), "ids": self.ids.cpu(),
                "ptr": self.ptr, "fill": self.fill, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["emb"].shape) != (self.size, self.dim) or int(state["num_samples"]) != self.num_samples:
            raise ValueError("the checkpoint's memory does not match this run's memory size / data")
        dev = self.emb.device
        self.emb = state["emb"].to(dev, self.emb.dtype)
        self._labels[: self.size] = state["labels"].to(dev)
        self._ids[: self.size] = state["ids"].to(dev)
        self._slot_of.fill_(-1)
        used = self.ids >= 0
        self._slot_of[self.ids[used]] = torch.nonzero(used).squeeze(1)
        self.ptr = int(state["ptr"])


class XBMLoss:
    """loss = loss(batch) + weight * loss(batch anchors vs memory), the memory switched on after
    ``warmup_iters``. Each step first enqueues the batch (so the memory holds the current embedding
    of every batch sample, never an old one beside it), then mines anchors against the memory,
    skipping each anchor's own entry.
    """

    def __init__(self, loss: BaseMetricLoss, memory: CrossBatchMemory | None, weight: float = 1.0,
                 warmup_iters: int = 0) -> None:
        self.loss, self.memory, self.weight, self.warmup_iters = loss, memory, float(weight), int(warmup_iters)

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
                 iteration: int) -> tuple[torch.Tensor, LossOutput, LossOutput | None]:
        """(total loss, batch part, memory part or None before warm-up / without memory)."""
        batch = self.loss(emb, labels, ids)
        if self.memory is None or iteration < self.warmup_iters:
            return batch.loss, batch, None
        self.memory.enqueue(emb, labels, ids, check=False)  # the trainer's ids come from its own sampler
        m_emb, m_lab, m_ids = self.memory.tables()
        mem = self.loss(emb, labels, ids, m_emb, m_lab, m_ids)
        return batch.loss + self.weight * mem.loss, batch, mem
