"""Data-parallel training with PyTorch's distributed package, started by ``torchrun``.

``torchrun --nproc-per-node N -m engine train ...`` (multi-node: torchrun's ``--nnodes``,
``--rdzv-endpoint`` ...) starts N processes, one rank each; :func:`context` joins them (NCCL on GPUs,
gloo on CPUs) and ``train`` runs a :class:`DistributedRun`:

- One seeded P x K sampler, the same on every rank, draws the global batch of N*P classes (distinct
  unless fewer exist); rank r embeds its P x K share. The random augmentation is drawn for the whole
  global batch on every rank and sliced, so every rank's generators stay equal: one state in the
  checkpoint, and a run resumes on any number of ranks.
- Gradients are all-reduced by DistributedDataParallel (which averages them).
- The loss is the loss one process would compute on the union of the batches (see
  :class:`DistributedXBMLoss` for why the averaged gradient equals that process's gradient).
- The Cross-Batch Memory is global: every rank enqueues the all-gathered batch, so every rank holds the
  same memory, the one a single large machine would (as the XBM paper does across GPUs).
- Rank 0 validates, writes the checkpoints (atomically) and reports; the others wait at the next
  collective. A step has no host sync apart from the collectives themselves.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from engine.training import data as D
from engine.training.losses import BaseMetricLoss, LossOutput
from engine.training.registry import BEST_FILE, LAST_FILE
from engine.training.sampler import PKSampler
from engine.training.trainer import _Pending, _Run
from engine.training.xbm import CrossBatchMemory


@dataclass
class DistContext:
    """This process's place in the process group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    control: object = None   # a gloo group for host-side agreement (cancellation) without touching the GPU

    @property
    def main(self) -> bool:
        return self.rank == 0


def _device_for(device_name: str, local_rank: int) -> torch.device:
    if device_name != "cpu" and not device_name.startswith("mps") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def context(device_name: str) -> Iterator[DistContext | None]:
    """Under torchrun (``WORLD_SIZE`` > 1 in the environment) or in an initialised process group: join it
    (created here from the environment when needed, and destroyed on exit) and yield this rank's
    :class:`DistContext`; else yield None (one process, nothing changes)."""
    if not dist.is_available() or (int(os.environ.get("WORLD_SIZE", "1")) < 2 and not dist.is_initialized()):
        yield None
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(device_name, local)
    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    elif device.type == "cuda" and dist.get_backend() != "nccl":
        device = torch.device("cpu")   # a gloo group: CPU tensors
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size(), local, device, control)
    finally:
        if created:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# the loss on the union of the ranks' batches
# --------------------------------------------------------------------------------------------------
class _GatherWithGrad(torch.autograd.Function):
    """all_gather of (B, D) rows -> (W*B, D) in rank order; backward: every rank's gradient of the
    gathered rows is summed (all_reduce) and each rank keeps its own rows' share."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


def gather_with_grad(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """(B, D) on every rank -> (W*B, D), differentiable w.r.t. every rank's rows (see _GatherWithGrad)."""
    return _GatherWithGrad.apply(x, rank, world)


def _global(out: LossOutput, world: int) -> tuple[torch.Tensor, LossOutput]:
    """(W * this rank's share of the union's mean loss, the share as a LossOutput): the rank's sum over
    the global tuple count (one all-reduce)."""
    count = out.count.clone()
    dist.all_reduce(count)
    share = (out.total / count.clamp_min(1)).float()
    return world * share, LossOutput(share, out.tuples, out.total, count)


class DistributedXBMLoss:
    """XBMLoss on the union of the ranks' batches: this rank's anchors against the all-gathered batch
    (and against the memory, which takes the all-gathered batch), each part's sum over the GLOBAL tuple
    count, times the number of ranks W.

    Why the DDP-averaged gradient is the single process's gradient on the union U = B_1 + ... + B_W:
    that process's loss is L = sum_{a in U} l_a / C, where l_a is anchor a's summed loss against U (and
    the memory) and C = sum_a c_a the tuple count; l_a and c_a depend only on a's row of distances,
    which are the same here. Rank r computes L_r = W * sum_{a in B_r} l_a / C (C from an all-reduce).
    The gather's backward sums over the ranks the gradient of every gathered row, so the gradient
    reaching an embedding e_j of rank s is sum_r dL_r/de_j = W * dL/de_j, and rank s's parameter
    gradient is g_s = W * sum_{j in B_s} dL/de_j de_j/dtheta. DDP averages: (1/W) sum_s g_s = dL/dtheta.
    The memory's rows are detached: the same argument without the gathered term.

    Returns (this rank's loss to backpropagate, batch part, memory part or None); each part's ``loss``
    is this rank's share of the union's figure, so the ranks' shares add up to it.
    """

    def __init__(self, loss: BaseMetricLoss, memory: CrossBatchMemory | None, weight: float, warmup_iters: int,
                 rank: int, world: int) -> None:
        self.loss, self.memory, self.weight, self.warmup_iters = loss, memory, float(weight), int(warmup_iters)
        self.rank, self.world = rank, world

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, iteration: int
                 ) -> tuple[torch.Tensor, LossOutput, LossOutput | None]:
        """emb (B, D): this rank's embeddings; labels, ids (W*B,): the global batch's."""
        b = emb.shape[0]
        mine = slice(self.rank * b, (self.rank + 1) * b)
        everyone = gather_with_grad(emb, self.rank, self.world)
        lab, own = labels[mine], ids[mine]
        total, part_b = _global(self.loss(emb, lab, own, everyone, labels, ids), self.world)
        if self.memory is None or iteration < self.warmup_iters:
            return total, part_b, None
        self.memory.enqueue(everyone.detach(), labels, ids, check=False)
        m_emb, m_lab, m_ids = self.memory.tables()
        mem_total, part_m = _global(self.loss(emb, lab, own, m_emb, m_lab, m_ids), self.world)
        return total + self.weight * mem_total, part_b, part_m


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
class _Embedder(nn.Module):
    """The training forward as one module, so DistributedDataParallel wraps it: (global batch's sample
    indices, augmentation generator, this rank's rows) -> (B, D) embeddings."""

    def __init__(self, model: nn.Module, source) -> None:
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, idx: torch.Tensor, gen: torch.Generator, local: slice) -> torch.Tensor:
        return self.source.embed_train(self.model, idx, gen, local)


class DistributedRun(_Run):
    """A :class:`engine.training.trainer._Run` on one rank of a process group (see the module docstring).
    Rank 0 alone reports, validates and writes; every rank returns the same TrainResult paths."""

    def __init__(self, ctx: DistContext, config, progress, should_stop, emit, resume_from) -> None:
        self.ctx = ctx
        if not ctx.main:
            def progress(done, total, message):
                return None

            def emit(event):
                return None
        super().__init__(config, progress, should_stop, emit, resume_from)
        self.device = ctx.device

    def message(self, text: str, it: int = 0) -> None:
        if self.ctx.main:
            super().message(text, it)

    def prepare_data(self) -> None:
        ctx = self.ctx
        if not ctx.main:
            dist.barrier()   # rank 0 computes any feature cache first; the others then read it
        super().prepare_data()
        if ctx.main:
            dist.barrier()
        c, w = self.config, ctx.world
        sampler = PKSampler(self.train_labels.tolist(), c.classes_per_batch * w, c.samples_per_class, c.seed)
        if sampler.P < w:
            raise ValueError(f"{w} processes need at least {w} training classes with 2 or more images; "
                             f"found {len(sampler.classes)}")
        sampler.P -= sampler.P % w     # an equal share of whole classes per rank
        self.sampler = sampler
        self.local_size = sampler.batch_size // w
        self.local = slice(ctx.rank * self.local_size, (ctx.rank + 1) * self.local_size)
        self.message(f"data-parallel: {w} processes; a step takes {sampler.P} classes x {sampler.K} images, "
                     f"{self.local_size} per process")

    def open_folder(self) -> None:
        box = [None]
        if self.ctx.main:
            super().open_folder()
            box = [str(self.out)]
        dist.broadcast_object_list(box, src=0)   # the folder rank 0 claimed, for every rank's result
        if not self.ctx.main:
            self.out = Path(box[0])
            self.last_path, self.best_path = self.out / LAST_FILE, self.out / BEST_FILE

    def build_optimisation(self) -> None:
        super().build_optimisation()
        c, ctx = self.config, self.ctx
        self.xbm = DistributedXBMLoss(self.xbm.loss, self.memory, c.memory_weight, c.warmup_iters, ctx.rank,
                                      ctx.world)
        for p in self._unused_parameters():   # DDP waits for every trainable parameter's gradient
            p.requires_grad_(False)
        # BatchNorm statistics train only in full mode without freeze_bn: then rank 0's are shared
        self.ddp = nn.parallel.DistributedDataParallel(
            _Embedder(self.model, self.source), device_ids=[self.device] if self.device.type == "cuda" else None,
            forward_sync_buffers=c.mode == "full" and not c.freeze_bn)

    def _unused_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters an embedding does not depend on (the backbone's classifier in full
        mode): they never get a gradient (AdamW skips them in one process too). Found on one training
        image in eval mode with a generator of its own, so no state of the run changes."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.eval()
        try:
            emb = self.source.embed_train(self.model, self.train_idx[:1].to(self.device),
                                          torch.Generator().manual_seed(0))
            grads = torch.autograd.grad(emb.float().sum(), params, allow_unused=True)
        finally:
            self.set_train_mode()
        return [p for p, g in zip(params, grads, strict=True) if g is None]

    # rank 0 validates and writes; the others keep the iteration of the last checkpoint
    def save_last(self, it: int) -> None:
        if self.ctx.main:
            super().save_last(it)
        self.last_saved = it

    def save_best(self, it: int) -> None:
        if self.ctx.main:
            super().save_best(it)

    def save_state(self, state: str, it: int) -> None:
        if self.ctx.main:
            super().save_state(state, it)

    def validate_untrained(self) -> None:
        if self.ctx.main:
            super().validate_untrained()
        else:
            self.set_train_mode()
            self.last_saved = 0

    def validation_point(self, it: int) -> str:
        reason = super().validation_point(it) if self.ctx.main else ""
        if not self.ctx.main:
            self.save_last(it)
        flag = torch.tensor([1.0 if reason else 0.0], device=self.device)
        dist.broadcast(flag, src=0)   # early stopping is rank 0's decision (read once per validation)
        if not self.ctx.main and bool(flag.item()):
            reason = "early stopping (rank 0's validation)"
        self.t_seg = time.perf_counter()
        return reason

    def stop_requested(self) -> bool:
        """Every rank stops at the same step: the ranks' requests are combined on the host (gloo)."""
        flag = torch.tensor([1 if self.should_stop() else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ctx.control)
        return bool(flag.item())

    def step(self, it: int) -> _Pending:
        """One step of every rank: this rank's share of the global batch, the loss on the union, DDP's
        averaged gradients; the figures are the union's (summed over the ranks, still on the device)."""
        fdt, zero, memory, w = self.fdt, self.zero, self.memory, self.ctx.world
        ids_cpu = self.sampler.next_batch()                       # the global batch (W*B,)
        ids = D.to_device(ids_cpu, self.device)
        emb = self.ddp(self.train_idx_d[ids], self.aug_gen, self.local)
        loss, part_b, part_m = self.xbm(emb, self.train_labels_d[ids], ids, it)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        shares = torch.stack([
            loss.detach().to(fdt) / w, part_b.loss.detach().to(fdt),
            zero if part_m is None else part_m.loss.detach().to(fdt),
            part_b.tuples.to(fdt), zero if part_m is None else part_m.tuples.to(fdt)])
        dist.all_reduce(shares)
        fill = zero if memory is None else memory.fill_tensor().to(fdt)
        return _Pending(it + 1, int(ids_cpu.numel()), part_m is not None, torch.cat([shares, fill[None]]))
