"""Data-parallel training on the CPU: 2 gloo processes started as torchrun starts them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment), each running a function of this file.

- one distributed step = one step of one process on the union of the two batches (loss, memory, gradients);
- a 2-process run follows the 1-process run whose batch is their union; its memory holds both ranks'
  embeddings and never two entries of one sample;
- a run killed and resumed continues exactly on 2 processes and on 1; a cancel request stops every
  process at the same step, and a 2-process checkpoint resumes on 1 process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(kind: str, spec: dict, tmp: Path, world: int = 2, timeout: float = 240,
            kill_when: list[Path] | None = None) -> None:
    """Run ``_worker(kind, spec)`` in ``world`` processes joined through the environment, as torchrun does;
    with ``kill_when``, SIGKILL them all once every one of those files exists."""
    spec_path = tmp / f"spec_{kind}_{len(list(tmp.glob('spec_*')))}.json"
    spec_path.write_text(json.dumps(spec))
    port = _free_port()
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]; import test_training_distributed as t; "
            f"t._worker({kind!r}, {str(spec_path)!r})")
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        with open(tmp / f"{spec_path.stem}_rank{rank}.log", "w") as log:   # a file: a full pipe would block
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT))
    t_end = time.monotonic() + timeout
    try:   # a rank that fails leaves the others waiting in a collective: stop them at once
        while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):
            assert time.monotonic() < t_end, f"{kind}: no result in {timeout} s"
            if kill_when and all(f.exists() for f in kill_when):
                for p in procs:
                    p.kill()
                for p in procs:
                    p.wait()
                return
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, p in enumerate(procs):
        log = (tmp / f"{spec_path.stem}_rank{rank}.log").read_text(errors="replace")
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"


def _worker(kind: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    {"step": _step_worker, "train": _train_worker, "nosync": _nosync_worker}[kind](spec)


# ---------------------------------------------------------------------------------------------------
# one step
LOSSES = ["semihard", "all", "hard", "contrastive"]


def _step_setup(loss_name: str):
    """The same model, cached features, pre-filled memory and global batch in every process."""
    from engine.training.losses import ContrastiveLoss, TripletLoss
    from engine.training.sampler import PKSampler
    from engine.training.trainer import _HeadData
    from engine.training.xbm import CrossBatchMemory
    from models.embedding import EmbeddingHead

    g = torch.Generator().manual_seed(0)
    n, c = 48, 16
    feats = torch.randn(n, 2, c, generator=g)
    labels = torch.arange(n) % 8
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.head = EmbeddingHead(c)
    with torch.no_grad():   # not the identity: gradients reach a non-trivial matrix
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    memory = CrossBatchMemory(40, c, n)
    for _ in range(2):       # older entries, some of samples that the batch brings again
        old = torch.randperm(n, generator=g)[:16]
        e = torch.randn(16, c, generator=g)
        memory.enqueue(e / e.norm(dim=1, keepdim=True), labels[old], old)
    ids = PKSampler(labels.tolist(), 4, 3, seed=5).next_batch()     # the global batch: 4 classes x 3
    loss = ContrastiveLoss(0.0, 0.6) if loss_name == "contrastive" else TripletLoss(0.3, loss_name)
    return model, _HeadData(feats, torch.device("cpu")), memory, ids, labels, loss


def _step_worker(spec: dict) -> None:
    from engine.training.distributed import DistributedXBMLoss, _Embedder, context

    out = {}
    with context("cpu") as ctx:
        assert ctx is not None and ctx.world == 2
        for name in LOSSES:
            model, source, memory, ids, labels, loss = _step_setup(name)
            ddp = torch.nn.parallel.DistributedDataParallel(_Embedder(model, source))
            b = ids.numel() // ctx.world
            emb = ddp(ids, torch.Generator().manual_seed(7), slice(ctx.rank * b, (ctx.rank + 1) * b))
            xbm = DistributedXBMLoss(loss, memory, 0.7, 0, ctx.rank, ctx.world)
            total, part_b, part_m = xbm(emb, labels[ids], ids, 0)
            total.backward()
            out[name] = {"total": total.detach(), "batch": part_b.loss.detach(), "memory": part_m.loss.detach(),
                         "tuples": part_b.tuples + part_m.tuples,
                         "grads": {k: p.grad for k, p in model.named_parameters()},
                         "mem_emb": memory.emb, "mem_ids": memory.ids}
        torch.save(out, Path(spec["out"]) / f"step_rank{ctx.rank}.pt")


@pytest.mark.slow  # two processes: ~10 s on 2 cores
def test_one_distributed_step_equals_one_process_on_the_union(tmp_path):
    from engine.training.xbm import XBMLoss

    _launch("step", {"out": str(tmp_path)}, tmp_path)
    ranks = [torch.load(tmp_path / f"step_rank{r}.pt", weights_only=True) for r in range(2)]
    for name in LOSSES:
        model, source, memory, ids, labels, loss = _step_setup(name)
        emb = source.embed_train(model, ids, torch.Generator().manual_seed(7))     # the union, one process
        total, part_b, part_m = XBMLoss(loss, memory, 0.7, 0)(emb, labels[ids], ids, 0)
        total.backward()
        r0, r1 = ranks[0][name], ranks[1][name]
        # each rank backpropagates W x its share; the shares add up to the union's loss
        assert (r0["total"] + r1["total"]) / 2 == pytest.approx(float(total.detach()), rel=1e-5, abs=1e-7), name
        assert float(r0["batch"] + r1["batch"]) == pytest.approx(float(part_b.loss.detach()), rel=1e-5, abs=1e-7)
        assert float(r0["memory"] + r1["memory"]) == pytest.approx(float(part_m.loss.detach()), rel=1e-5, abs=1e-7)
        assert int(r0["tuples"] + r1["tuples"]) == int(part_b.tuples + part_m.tuples) > 0
        # the memory took both ranks' embeddings, as the one process's memory did
        for r in (r0, r1):
            assert torch.equal(r["mem_ids"], memory.ids) and torch.allclose(r["mem_emb"], memory.emb, atol=1e-6)
        # DDP's averaged gradient = the one process's gradient, on both ranks
        for k, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, k)
            for r in (r0, r1):
                torch.testing.assert_close(r["grads"][k], p.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")


# ---------------------------------------------------------------------------------------------------
# whole runs
def _train_worker(spec: dict) -> None:
    from engine.training.config import TrainConfig
    from engine.training.launch import train

    calls = {"n": 0}

    rank = int(os.environ["RANK"])

    def should_stop() -> bool:
        calls["n"] += 1
        if spec.get("hang_after") is not None and calls["n"] > spec["hang_after"]:
            Path(spec["out"], f"rank{rank}.hung").touch()   # waits here to be killed
            time.sleep(3600)
        return spec["stop_after"] is not None and calls["n"] > spec["stop_after"]

    res = train(TrainConfig(**spec["config"]), should_stop=should_stop, resume_from=spec["resume"])
    Path(spec["out"], f"rank{rank}.json").write_text(json.dumps({
        "history": res.history, "checkpoint": res.checkpoint_path, "cancelled": res.cancelled,
        "reason": res.stopped_reason, "last_iteration": res.last_iteration}))


def _run2(tmp: Path, config: dict, *, stop_after: int | None = None, resume: str | None = None) -> list[dict]:
    out = tmp / f"out{len(list(tmp.glob('out*')))}"
    out.mkdir()
    _launch("train", {"config": config, "stop_after": stop_after, "resume": resume, "out": str(out)}, tmp)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _killed(tmp: Path, config: dict, world: int, hang_after: int) -> str:
    """Start a run on ``world`` processes, SIGKILL them after ``hang_after`` steps; its last.pt."""
    out = tmp / f"out{len(list(tmp.glob('out*')))}"
    out.mkdir()
    _launch("train", {"config": config, "stop_after": None, "hang_after": hang_after, "resume": None,
                      "out": str(out)}, tmp, world=world, kill_when=[out / f"rank{r}.hung" for r in range(world)])
    assert not list(out.glob("rank*.json"))   # killed, not finished
    return str(Path(config["out_dir"]) / "last.pt")


def _losses(history: list[dict]) -> list[tuple]:
    return [(r["iteration"], r["loss"], r["loss_batch"], r["loss_memory"], r["triplets_batch"],
             r["triplets_memory"], r["memory_fill"]) for r in history if "loss" in r]


def _separable_features(config: dict) -> None:
    """Write head mode's feature cache for ``config``: well separated class centres plus noise (a random
    backbone's features of the tiny images are nearly equal, and mining on them flips with float noise)."""
    from engine.training.config import TrainConfig
    from engine.training.trainer import feature_cache_path, validation_split
    from models.embedding import build_model_from_config

    cfg = TrainConfig(**config)
    imgs = validation_split(cfg).images
    dim = build_model_from_config(cfg.to_dict()).backbone.feature_dim
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(len(imgs.classes), dim, generator=g)
    feats = centres[torch.tensor(imgs.labels)][:, None] + 0.7 * torch.randn(len(imgs.paths), 2, dim, generator=g)
    path = feature_cache_path(cfg, imgs.paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"feats": feats, "ok": list(range(len(imgs.paths))), "skipped": [], "untrained": None}, path)


@pytest.mark.slow  # four 2-process runs and two 1-process runs: ~90 s on 2 cores
def test_two_processes_train_like_one_on_the_union_and_resume_exactly(image_folder, tmp_path):
    from engine.training.config import TrainConfig
    from engine.training.launch import train

    root = image_folder(n_classes=6, per_class=5, size=40)
    base = dict(data_root=str(root), weights="random", image_size=32, iterations=10, val_every=4, mode="head",
                classes_per_batch=2, samples_per_class=2, warmup_iters=2, cache_dir=str(tmp_path / "cache"),
                lr_head=1e-3, margin=0.3, mining="all", num_threads=1, memory_share=0.8)
    _separable_features(base)

    # 2 processes x 2 classes against 1 process x 4 classes: the same global batches, memory and figures
    two = _run2(tmp_path, base | {"out_dir": str(tmp_path / "two")})
    assert two[0]["checkpoint"] == two[1]["checkpoint"] == str(tmp_path / "two" / "last.pt")
    one = train(TrainConfig(**base | {"classes_per_batch": 4, "out_dir": str(tmp_path / "one")}))
    got, want = _losses(two[0]["history"]), _losses(one.history)
    assert len(got) == len(want) == 10 and got[-1][3] is not None   # the memory part from iteration 3 on
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0] and g[4:] == w[4:]                      # tuple counts and memory fill: exact
        assert (g[3] is None) == (w[3] is None)
        assert [v or 0.0 for v in g[1:4]] == pytest.approx([v or 0.0 for v in w[1:4]], rel=1e-4, abs=1e-6)
    a = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    b = torch.load(one.checkpoint_path, weights_only=True)
    ids = a["memory"]["ids"]
    used = ids[ids >= 0]
    assert used.numel() == used.unique().numel() > 8                 # never two entries of one sample;
    assert torch.equal(ids, b["memory"]["ids"])                      # both ranks' samples, as one process
    torch.testing.assert_close(a["memory"]["emb"], b["memory"]["emb"], rtol=1e-3, atol=1e-4)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-3, atol=1e-4)

    # killed (SIGKILL) after 6 steps, resumed from the last.pt of iteration 4 on 2 processes: exactly the
    # uninterrupted 2-process run; on 1 process, exactly the uninterrupted 1-process run
    last = _killed(tmp_path, base | {"out_dir": str(tmp_path / "kill2")}, world=2, hang_after=6)
    assert torch.load(last, weights_only=True)["train_state"]["iteration"] == 4
    resumed = _run2(tmp_path, base, resume=last)
    assert _losses(resumed[0]["history"]) == _losses(two[0]["history"])   # bit-identical
    last1 = _killed(tmp_path, base | {"classes_per_batch": 4, "out_dir": str(tmp_path / "kill1")}, world=1,
                    hang_after=6)
    assert torch.load(last1, weights_only=True)["train_state"]["iteration"] == 4
    assert _losses(train(TrainConfig(**base), resume_from=last1).history) == _losses(one.history)
    c = torch.load(last, weights_only=True)
    assert c["train_state"]["iteration"] == 10
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    assert torch.equal(a["memory"]["emb"], c["memory"]["emb"])

    # a new cache, computed by rank 0 while rank 1 waits (rank 0 asks to stop one step earlier: its
    # cache pass called should_stop once; both stop at the same step); the checkpoint resumes on 1 process
    part1 = _run2(tmp_path, base | {"out_dir": str(tmp_path / "part1"), "cache_dir": str(tmp_path / "cache1")},
                  stop_after=5)
    assert part1[0]["cancelled"] and part1[0]["last_iteration"] == part1[1]["last_iteration"] == 4
    res = train(TrainConfig(**base), resume_from=part1[0]["checkpoint"])
    assert not res.cancelled and res.last_iteration == 10
    assert _losses(res.history)[:4] == _losses(part1[0]["history"])


# ---------------------------------------------------------------------------------------------------
# no host sync in the distributed step, collectives aside
def _nosync_worker(spec: dict) -> None:
    from test_training_nosync import SyncRecorder

    from engine.training import distributed
    from engine.training.config import TrainConfig
    from engine.training.launch import train

    class Recorder(SyncRecorder):
        paused = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.paused:
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

    rec = Recorder()
    real_step = distributed.DistributedRun.step

    def step(self, it):
        # the optimizer's update is left out, as in test_training_nosync.py: fused on CUDA, no sync there
        real_opt_step = self.opt.step

        def opt_step(*a, **k):
            rec.paused = True
            try:
                return real_opt_step(*a, **k)
            finally:
                rec.paused = False

        self.opt.step = opt_step
        try:
            with rec:
                return real_step(self, it)
        finally:
            del self.opt.step

    distributed.DistributedRun.step = step
    torch.distributed.init_process_group("gloo")   # one group for both runs (train() joins it, leaves it open)
    for mode in ("head", "full"):
        train(TrainConfig(**spec["config"] | {"mode": mode, "out_dir": str(Path(spec["out"]) / mode)}))
    torch.distributed.destroy_process_group()
    Path(spec["out"], f"rank{os.environ['RANK']}.json").write_text(json.dumps({"syncs": rec.syncs,
                                                                               "ops": rec.ops}))


@pytest.mark.slow  # two processes, two short runs each: ~20 s on 2 cores
def test_distributed_step_has_no_host_sync_but_its_collectives(image_folder, tmp_path):
    root = image_folder(n_classes=6, per_class=4, size=40)
    config = dict(data_root=str(root), weights="random", image_size=32, iterations=4, val_every=4,
                  classes_per_batch=2, samples_per_class=2, warmup_iters=1, cache_dir=str(tmp_path / "cache"),
                  num_threads=1)
    _launch("nosync", {"config": config, "out": str(tmp_path)}, tmp_path)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["ops"] > 500 and got["syncs"] == [], got["syncs"][:20]
