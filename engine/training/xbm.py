"""Cross-Batch Memory (Wang et al., CVPR 2020): a ring buffer of past embeddings used as extra
positives and negatives for the current batch's anchors.

The buffer is keyed by sample index: enqueueing a sample that is already in memory replaces its
entry in place, so an old and a new embedding of one sample never coexist.
"""

from __future__ import annotations

import torch

from engine.training.losses import BaseMetricLoss, LossOutput


class CrossBatchMemory:
    """Ring buffer: ``emb`` (size, D), ``labels`` (size,), ``ids`` (size,), ``fill`` entries used.

    ``num_samples`` bounds the sample indices (the training-set size) for the id -> slot table.
    """

    def __init__(self, size: int, dim: int, num_samples: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if size < 1:
            raise ValueError("memory size must be >= 1")
        self.size, self.dim, self.num_samples = int(size), int(dim), int(num_samples)
        self.emb = torch.zeros(self.size, self.dim, device=device, dtype=dtype)
        self.labels = torch.full((self.size,), -1, dtype=torch.long, device=device)
        self.ids = torch.full((self.size,), -1, dtype=torch.long, device=device)
        self.slot_of = torch.full((self.num_samples,), -1, dtype=torch.long, device=device)
        self.ptr = 0
        self.fill = 0

    @torch.no_grad()
    def enqueue(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        """Store (detached) embeddings (B, D) with their labels and sample ids (B,)."""
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"memory expects (B, {self.dim}) embeddings, got {tuple(emb.shape)}")
        if labels.shape != ids.shape or ids.shape[0] != emb.shape[0]:
            raise ValueError("labels and ids must be (B,) like the embeddings")
        emb, labels, ids = emb.detach().to(self.emb), labels.to(self.labels.device), ids.to(self.ids.device)
        if int(ids.min()) < 0 or int(ids.max()) >= self.num_samples:
            raise ValueError(f"sample ids must be in [0, {self.num_samples})")
        # a sample repeated inside the batch: keep its last occurrence
        uniq, inverse = torch.unique(ids, return_inverse=True)
        if uniq.numel() != ids.numel():
            pos = torch.arange(ids.numel(), device=ids.device)
            last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=ids.device).scatter_reduce(
                0, inverse, pos, reduce="amax")
            emb, labels, ids = emb[last], labels[last], ids[last]
        slots = self.slot_of[ids]
        present = slots >= 0
        # 1. samples already in memory: replace their entry in place
        if bool(present.any()):
            s = slots[present]
            self.emb[s], self.labels[s] = emb[present], labels[present]
        # 2. new samples: the next ring slots (the last `size` of them if the batch is larger)
        new = ~present
        emb, labels, ids = emb[new], labels[new], ids[new]
        n_new = int(ids.numel())
        if n_new == 0:
            return
        if n_new > self.size:
            emb, labels, ids = emb[-self.size:], labels[-self.size:], ids[-self.size:]
            n_new = self.size
        s = (self.ptr + torch.arange(n_new, device=self.ids.device)) % self.size
        evicted = self.ids[s]
        self.slot_of[evicted[evicted >= 0]] = -1
        self.emb[s], self.labels[s], self.ids[s] = emb, labels, ids
        self.slot_of[ids] = s
        self.ptr = (self.ptr + n_new) % self.size
        self.fill = min(self.size, self.fill + n_new)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(emb (F, D), labels (F,), ids (F,)) of the used slots."""
        used = self.ids >= 0
        return self.emb[used], self.labels[used], self.ids[used]

    def state_dict(self) -> dict:
        return {"emb": self.emb.cpu(), "labels": self.labels.cpu(), "ids": self.ids.cpu(),
                "ptr": self.ptr, "fill": self.fill, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["emb"].shape) != (self.size, self.dim) or int(state["num_samples"]) != self.num_samples:
            raise ValueError("the checkpoint's memory does not match this run's memory size / data")
        dev = self.emb.device
        self.emb = state["emb"].to(dev, self.emb.dtype)
        self.labels, self.ids = state["labels"].to(dev), state["ids"].to(dev)
        self.slot_of = torch.full((self.num_samples,), -1, dtype=torch.long, device=dev)
        used = self.ids >= 0
        self.slot_of[self.ids[used]] = torch.nonzero(used).squeeze(1)
        self.ptr, self.fill = int(state["ptr"]), int(state["fill"])


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
        self.memory.enqueue(emb, labels, ids)
        m_emb, m_lab, m_ids = self.memory.contents()
        mem = self.loss(emb, labels, ids, m_emb, m_lab, m_ids)
        return batch.loss + self.weight * mem.loss, batch, mem
