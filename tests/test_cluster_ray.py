"""engine.cluster: indexing on a Ray cluster (here a local one with two CPUs) writes the collection the
local path writes; a worker killed mid-run costs one batch; a stopped run continues where it stopped.

One network for the module: ResNet-18 with random weights at 64 px (its export to ONNX takes seconds),
four descriptors from one pass (fc: the backbone's own head; gem with a whitening: arrays shipped
to the workers), 40 images and one file that is not an image. Each Ray run starts its workers afresh
(seconds each on two cores), hence ``slow``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from engine.collection import Collection, update_collections
from engine.extraction import build_model
from engine.vocabulary import ModelSpec

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SIZE = 64
BATCH = 8
N_IMAGES = 40
# float16 storage: the worker rounds the rows once, the driver (normalising again) a second time, so a
# component may differ from the local path's by one float16 step (2^-11 relative); the rows stay unit
DIFF_TOL = 2e-3


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from conftest import synthetic_image

    root = tmp_path_factory.mktemp("cluster") / "images"
    for c in range(4):
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True)
        for v in range(N_IMAGES // 4):
            synthetic_image(c, v, 64).save(d / f"{v:03d}.jpg")
    (root / "class_01" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def model(folder, tmp_path_factory):
    """(specs, models sharing one backbone, feature runner): the same objects for every run."""
    from engine.runtime import feature_runner
    from engine.whitening import save_whitening
    from models.whitening import PCAWhitening

    white = tmp_path_factory.mktemp("white") / "gem.npz"
    rng = np.random.default_rng(0)
    save_whitening(PCAWhitening.fit(rng.normal(size=(600, 512)), dim=64,
                                   meta={"descriptor": "gem", "sizes": [SIZE]}), white)
    specs = [ModelSpec("resnet18", "random", d, SIZE) for d in ("spoc", "fc", "rmac")]
    specs.append(ModelSpec("resnet18", "random", "gem", SIZE, whitening=str(white)))
    first = build_model(specs[0])
    models = [first] + [build_model(s, backbone=first.backbone) for s in specs[1:]]
    features = feature_runner(first.backbone, SIZE, specs[0].backbone_identity(),
                              tmp_path_factory.mktemp("runtimes"), "auto", threads=1)
    return specs, models, features


def _open(folder: Path, specs, cache: Path) -> list[Collection]:
    return [Collection.open(folder, model_spec=s, cache_dir=cache) for s in specs]


@pytest.fixture(scope="module")
def local(folder, model, tmp_path_factory) -> list[Collection]:
    specs, models, features = model
    cols = _open(folder, specs, tmp_path_factory.mktemp("local"))
    update_collections(list(zip(cols, models, strict=True)), features=features, batch_size=BATCH)
    return cols


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _assert_same(got: list[Collection], want: list[Collection]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.relpaths == w.relpaths, g.model_spec.descriptor
        assert g.vectors.shape == w.vectors.shape and g.vectors.shape[0] == N_IMAGES
        diff = np.abs(g.vectors - w.vectors).max()
        assert diff <= DIFF_TOL, (g.model_spec.descriptor, diff)
        assert [(s.path, s.reason) for s in g.skipped] == [(s.path, s.reason) for s in w.skipped] != []


def _counting_hook(marks: Path, kill_first: str | None = None):
    """``on_batch`` for the workers: one marker file per batch started (named by its first file); the
    first time the batch starting with ``kill_first`` comes, the worker process dies (os._exit)."""
    where = str(marks)

    def hook(paths: list[str]) -> None:
        first = "-".join(Path(paths[0]).parts[-2:])
        open(os.path.join(where, f"{first}@{uuid.uuid4().hex}"), "w").close()  # noqa: SIM115
        if first == kill_first and not os.path.exists(os.path.join(where, "killed")):
            open(os.path.join(where, "killed"), "w").close()  # noqa: SIM115
            os._exit(1)

    return hook


def _calls(marks: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in marks.iterdir():
        if "@" in p.name:
            key = p.name.split("@")[0]
            out[key] = out.get(key, 0) + 1
    return out


def test_worker_model_is_data_not_modules(model, folder, tmp_path):
    from engine.cluster import worker_model

    specs, models, features = model
    package = worker_model(list(zip(_open(folder, specs, tmp_path), models, strict=True)), features)
    assert package.state and all(type(v) is np.ndarray for v in package.state.values())
    assert [h.kind for h in package.heads] == ["spoc", "fc", "rmac", "gem"]
    assert package.heads[3].whitening is not None and package.heads[3].whitening[1].shape == (64, 512)
    assert package.runtime == features.name
    assert (package.onnx is not None) == (features.name != "torch")


def test_ray_run_equals_the_local_path_and_a_killed_worker_costs_one_batch(cluster, folder, model, local,
                                                                             tmp_path):
    from engine.cluster import index_on_ray

    specs, models, features = model
    cols = _open(folder, specs, tmp_path / "cache")
    marks = tmp_path / "marks"
    marks.mkdir()
    order = sorted((p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")), key=lambda r: r.split("/"))
    victim = order[2 * BATCH].replace("/", "-")  # the first file of the third batch
    reports = index_on_ray(list(zip(cols, models, strict=True)), features=features, batch_size=BATCH,
                           cpus_per_worker=1, on_batch=_counting_hook(marks, kill_first=victim))
    assert (marks / "killed").exists()
    calls = _calls(marks)
    n_batches = -(-(N_IMAGES + 1) // BATCH)
    assert len(calls) == n_batches and victim in calls
    # the killed worker's batch was read twice, every other batch once: one batch lost, no more
    assert calls[victim] == 2 and sum(calls.values()) == n_batches + 1
    assert not reports[0].cancelled and reports[0].extracted == N_IMAGES + 1
    _assert_same(_open(folder, specs, tmp_path / "cache"), local)  # as committed on disk


def test_a_stopped_ray_run_continues_where_it_stopped(cluster, folder, model, local, tmp_path):
    from engine.cluster import index_on_ray

    specs, models, features = model
    cache = tmp_path / "cache"
    pairs = list(zip(_open(folder, specs, cache), models, strict=True))
    first = index_on_ray(pairs, features=features, batch_size=BATCH, cpus_per_worker=1,
                         should_stop=lambda: True)  # stops after the first batch that comes back
    assert first[0].cancelled
    kept = _open(folder, specs, cache)
    done = len(kept[0]) + len(kept[0].skipped)
    assert 0 < done < N_IMAGES + 1 and kept[0].is_saved
    marks = tmp_path / "marks"
    marks.mkdir()
    pairs = list(zip(_open(folder, specs, cache), models, strict=True))
    second = index_on_ray(pairs, features=features, batch_size=BATCH, cpus_per_worker=1,
                          on_batch=_counting_hook(marks))
    # only what the first run had not committed is read again
    assert second[0].extracted == N_IMAGES + 1 - done
    assert sum(_calls(marks).values()) == -(-(N_IMAGES + 1 - done) // BATCH)
    _assert_same(_open(folder, specs, cache), local)


def test_without_ray_the_option_says_how_to_install_it(monkeypatch, folder, tmp_path, capsys):
    import sys

    from engine.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code = main(["index", str(folder), "--ray", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "retrieval-explorer[cluster]" in err and "Traceback" not in err


def test_a_worker_error_ends_the_run_with_its_message_and_keeps_the_commits(cluster, folder, model, tmp_path):
    from engine.cluster import ClusterRunError, index_on_ray

    specs, models, features = model
    cols = _open(folder, specs, tmp_path)
    manifest = str(cols[0].state_dir / "manifest.json")

    def fail_on_the_last(paths: list[str]) -> None:
        if paths[0].endswith("class_03/009.jpg"):  # the last batch (41 files in batches of 8)
            import time

            for _ in range(600):  # once the driver has committed a batch: the error comes after it
                if os.path.exists(manifest):
                    break
                time.sleep(0.1)
            raise ValueError("no such codec on this node")

    with pytest.raises(ClusterRunError, match="ValueError: no such codec on this node") as info:
        index_on_ray(list(zip(cols, models, strict=True)), features=features, batch_size=BATCH,
                     cpus_per_worker=1, commit_every=BATCH, on_batch=fail_on_the_last)
    assert "Traceback" not in str(info.value)
    kept = _open(folder, specs, tmp_path)
    assert kept[0].is_saved and 0 < len(kept[0]) < N_IMAGES  # the batches before it were committed


def test_a_worker_that_sees_none_of_its_files_says_so(model, folder, tmp_path):
    from engine.cluster import BatchExtractor, _join, worker_model

    specs, models, features = model
    package = worker_model(list(zip(_open(folder, specs, tmp_path), models, strict=True)), features)
    worker = BatchExtractor(package)
    gone = [str(tmp_path / "elsewhere" / f"{i}.jpg") for i in range(3)]
    with pytest.raises(FileNotFoundError, match="every node of the cluster must see the images"):
        worker({"start": np.array([0]), "files": np.array([_join(gone)], dtype=object)})
    # a batch where some files exist: the missing one is skipped with its reason, as locally
    some = [str(next(folder.rglob("000.jpg"))), gone[0]]
    out = worker({"start": np.array([5]), "files": np.array([_join(some)], dtype=object)})
    assert out["index"].tolist() == [5, 6] and out["ok"].tolist() == [True, False]
    assert out["v0"].dtype == np.float16 and out["v0"].shape == (2, models[0].dim)


def test_a_trained_checkpoint_reaches_the_workers_as_its_file_and_gives_the_drivers_vectors(tmp_path, folder):
    import torch

    from engine.cluster import build_worker_models, worker_model
    from engine.training.checkpoint import save_checkpoint
    from engine.training.config import TrainConfig
    from models.embedding import build_model_from_config

    cfg = TrainConfig(data_root="x", weights="random", embedding_dim=64, pooling="mac").to_dict()
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "best.pt"
    save_checkpoint(ckpt, {"config": cfg, "model": build_model_from_config(cfg).state_dict(), "metrics": {}})
    specs = [ModelSpec(str(ckpt), descriptor=d, image_size=48) for d in ("fc", "gem")]
    first = build_model(specs[0])
    models = [first, build_model(specs[1], backbone=first.backbone)]
    package = worker_model(list(zip(_open(folder, specs, tmp_path / "c"), models, strict=True)))
    assert package.state is None and package.checkpoint == ckpt.read_bytes() and package.runtime == "torch"
    runner, heads = build_worker_models(package)
    x = torch.randn(3, 3, 48, 48)
    with torch.inference_mode():
        for head, model in zip(heads, models, strict=True):
            assert head.dim == model.dim
            torch.testing.assert_close(head.describe(runner(x)), model(x), rtol=0, atol=1e-6)
