"""The window's controllers keep one consistent state whatever the order of the user's actions (issue 24).

A hypothesis RuleBasedStateMachine drives retrieval_gui.controllers.Explorer, with fast stand-in engine
functions (a fake FolderIndex whose indexing advances only when the machine lets it, a fake search) and
real worker threads (workers.LatestTask), through random sequences of: open a folder, open another while
indexing, cancel, query inside and outside the folder, switch descriptor, sizes and model, training
finished ("Use this model"), use a whitening, close. After every step it checks the invariants below.

The same machine run against main's indexing check (a folder opened while another one's cancelled
indexing still runs with the same model settings was never indexed: ``LegacyFolderController``) fails:
``test_the_machine_finds_main_s_never_indexed_folder``.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from PySide6.QtCore import QCoreApplication

from engine.session import IndexState, SearchResult, hit, list_descriptors
from retrieval_gui.controllers import Explorer, FolderController, wait_idle

FOLDERS = {"birds": 5, "cars": 8, "empty": 0}  # images per folder
STEPS = {"n": 0}  # steps run, over every example (the test checks it ran at least 2,000)
BACKBONES = ("efficientnet_lite0", "resnet18")


class World:
    """The stand-in engine's shared state: image files, the indexing permits, one lock for the counts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.permits = threading.Semaphore(0)
        self.files: dict[str, list[Path]] = {}
        for name, n in FOLDERS.items():
            paths = [root / name / f"class_{i % 2}" / f"{i:03d}.jpg" for i in range(n)]
            for p in paths:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"fake")
            (root / name).mkdir(exist_ok=True)
            self.files[name] = paths
        self.outside = root / "elsewhere" / "class_0" / "000.jpg"  # another folder's image, same name
        self.outside.parent.mkdir(parents=True)
        self.outside.write_bytes(b"fake")
        self.bad = root / "elsewhere" / "not-an-image.jpg"
        self.bad.write_bytes(b"text")
        self.trained = root / "runs" / "run-1" / "best.pt"


class FakeIndex:
    """A FolderIndex of a World folder: ``update`` indexes one image per permit, checks ``should_stop``."""

    def __init__(self, world: World, folder, _cache_dir=None) -> None:
        self.world, self.folder = world, Path(folder)
        if self.folder.name not in FOLDERS:
            raise FileNotFoundError(f"not an image folder: {self.folder}")
        self.paths = [str(p) for p in world.files[self.folder.name]]
        self.counts: dict = {}

    def update(self, _models, spec, *, progress, should_stop, **_kw) -> IndexState:
        specs = [spec.with_descriptor(d) for d in [spec.descriptor, *list_descriptors()]]
        n = len(self.paths)
        with self.world.lock:
            for s in specs:
                self.counts.setdefault(s, 0)
        progress(0, 0, "loading")
        while True:
            with self.world.lock:
                done = self.counts[spec]
            if done >= n:
                return IndexState(spec, n, n, 0, 0, [], False, 0.0)
            if should_stop():
                return IndexState(spec, n, done, 0, 0, [], True, 0.0)
            if self.world.permits.acquire(timeout=0.001):
                with self.world.lock:
                    for s in specs:
                        self.counts[s] = max(self.counts[s], done + 1)
                progress(done + 1, n, "indexing")

    def indexed_count(self, spec):
        with self.world.lock:
            return self.counts.get(spec)

    def total_files(self, spec):
        with self.world.lock:
            return len(self.paths) if spec in self.counts else None

    def collection_path(self, path):
        p = Path(path)
        return str(p) if self.folder in p.parents else None

    def label_of(self, path):
        return Path(path).parent.name if self.collection_path(path) else None


def fake_search(index: FakeIndex, _models, spec, query: str, options) -> SearchResult:
    if Path(query).name == "not-an-image.jpg":
        raise ValueError("cannot identify image file")
    n = index.indexed_count(spec) or 0
    if n == 0:
        raise RuntimeError("not indexed yet")
    found = [p for p in index.paths[:n] if p != query][: options.k]
    hits = [hit(p, 1.0 - i / 100, i + 1, index.label_of(p)) for i, p in enumerate(found)]
    return SearchResult(spec, query, index.label_of(query), hits, np.zeros(4, np.float32), 0.001, "exact")


def fake_listing(index: FakeIndex, spec):
    n = index.indexed_count(spec) or 0
    return index.paths[:n], [index.label_of(p) for p in index.paths[:n]], {}


def fake_whitening_check(path: str, spec) -> str | None:
    return None if spec.descriptor == "gem" else "learned for the GeM descriptor; choose it first"


def legacy_start_indexing(folder: FolderController):
    """main's start_indexing (main_window.py before issue 24) on ``folder``: it returned early while an
    indexing task was still running with the same model settings, the folder not part of that check."""
    state = {"key": None}

    def start_indexing(key, *, again=False):
        if folder.index is not None and folder.task.running() and state["key"] == key:
            return
        state["key"] = key
        FolderController.start_indexing(folder, key, again=again)

    return start_indexing


def pump(ms: float = 2.0) -> None:
    """Deliver the workers' queued signals for about ``ms`` milliseconds."""
    end = time.monotonic() + ms / 1000
    QCoreApplication.processEvents()
    while time.monotonic() < end:
        time.sleep(0.0005)
        QCoreApplication.processEvents()


class ExplorerMachine(RuleBasedStateMachine):
    legacy = False  # True: main's start_indexing
    world: World  # set by the test (one temporary tree for every example)

    def __init__(self) -> None:
        super().__init__()
        self.ex = Explorer(object(), weights="random", image_size=64,
                           open_index=lambda f, c=None: FakeIndex(self.world, f, c), run=fake_search,
                           list_images=fake_listing, check_whitening=fake_whitening_check)
        if self.legacy:
            self.ex.folder.start_indexing = legacy_start_indexing(self.ex.folder)
        self.ex.changed.connect(self._maybe_list)

    def _maybe_list(self) -> None:  # the window lists the collection as it grows
        if self.ex.grid_mode() == "collection" and not self.ex.folder.browse_task.busy:
            lst = self.ex.listing()
            if lst is None or len(lst[0]) != self.ex.folder.searchable_count(self.ex.model.key):
                self.ex.folder.load_listing(self.ex.model.key)

    def teardown(self) -> None:
        self.ex.close()
        assert wait_idle(self.ex.tasks(), 10_000)
        while self.world.permits.acquire(blocking=False):
            pass
        self.ex.deleteLater()
        QCoreApplication.processEvents()

    def _step(self) -> None:
        STEPS["n"] += 1
        pump()

    # -- the user's actions -------------------------------------------------------------------------
    @rule(name=st.sampled_from([*FOLDERS, "missing"]))
    def open_folder(self, name: str) -> None:
        was = self.ex.folder.index
        why = self.ex.open_folder(self.world.root / name)
        if name == "missing":
            assert why and "not an image folder" in why and self.ex.folder.index is was
        else:
            assert why is None
            # nothing of the previous folder carries over: no query, no result
            assert self.ex.query.path is None and self.ex.query.result is None
        self._step()

    @rule(first=st.sampled_from(["birds", "cars"]), second=st.sampled_from(list(FOLDERS)))
    def open_another_while_indexing(self, first: str, second: str) -> None:
        if not self.ex.folder.indexing:  # (no precondition: one on thread timing would make replays differ)
            assert self.ex.open_folder(self.world.root / first) is None
            assert self.ex.folder.indexing  # it waits for the machine's permits
        self.open_folder(second)

    @rule(n=st.integers(1, 4))
    def index_some(self, n: int) -> None:
        self.world.permits.release(n)
        self._step()
        pump(4)

    @rule()
    def settle(self) -> None:
        self.world.permits.release(50)
        end = time.monotonic() + 5
        while self.ex.folder.indexing and time.monotonic() < end:
            pump(2)
        self._step()

    @rule()
    def cancel(self) -> None:
        self.ex.folder.cancel()
        self._step()

    @rule(i=st.integers(0, 7))
    def query_inside(self, i: int) -> None:
        index = self.ex.folder.index
        if index is None or not index.paths:
            return self.query_outside()
        self.ex.query.set_query(index.paths[i % len(index.paths)])
        self._step()

    @rule()
    def query_outside(self) -> None:
        assert self.ex.query.set_query(str(self.world.outside)) is None
        self._step()

    @rule()
    def query_bad(self) -> None:
        self.ex.query.set_query(str(self.world.bad))
        self._step()

    @rule(d=st.sampled_from(list_descriptors()))
    def switch_descriptor(self, d: str) -> None:
        assert self.ex.model.set_descriptor(d) is None and self.ex.model.key.descriptor == d
        self._step()

    @rule(s=st.sampled_from(["single", "multi"]))
    def switch_sizes(self, s: str) -> None:
        assert self.ex.model.set_sizes(s) is None and self.ex.model.sizes == s
        self._step()

    @rule(b=st.sampled_from(BACKBONES))
    def switch_model(self, b: str) -> None:
        assert self.ex.model.use_model(b) is None and self.ex.model.key.backbone == b
        self._step()

    @rule()
    def training_finished(self) -> None:
        """The wizard's "Use this model": the trained model with its own embedding, named as the trained one."""
        assert self.ex.model.use_model(str(self.world.trained)) is None
        assert self.ex.model.key.descriptor == "fc" and "trained embedding (run-1)" in self.ex.status_text()
        self._step()

    @rule(gem=st.booleans())
    def use_whitening(self, gem: bool) -> None:
        if gem:
            self.ex.model.set_descriptor("gem")
        before = self.ex.model.key
        fits = before.descriptor == "gem"  # the stand-in whitening file was learned for GeM
        why = self.ex.model.use_whitening(str(self.world.root / "gem.npz"))
        if fits:
            assert why is None and self.ex.model.key.whitening is not None
        else:
            assert "choose it first" in why and self.ex.model.key == before
        self._step()

    @rule()
    def close(self) -> None:
        """What the window does when it closes: no folder, every task cancelled."""
        was_open = self.ex.folder.index is not None
        self.ex.close()
        assert self.ex.grid_mode() == "welcome" and (self.ex.query.path is None or not was_open)
        assert all(t.cancelled() or not t.running() for t in self.ex.tasks())
        self._step()

    # -- what must hold after every step ------------------------------------------------------------
    @invariant()
    def shown_belongs_to_the_open_folder_and_model_or_is_marked_out_of_date(self) -> None:
        with self.world.lock:
            ex, mode = self.ex, self.ex.grid_mode()
            index, key, q = ex.folder.index, ex.model.key, ex.query
            text, warns = ex.header_text()
            if index is None:
                assert mode == "welcome" and text == ""
                return
            if mode in ("results", "stale"):
                assert q.result_folder == Path(index.folder)
                assert all(Path(index.folder) in Path(h.path).parents for h in q.result.hits)
                assert warns == (mode == "stale")
                if mode == "results":
                    assert q.result.spec == key
                    assert q.result.query == q.path or q.busy  # a new query of the same model is being searched
                else:
                    assert text.startswith("Out of date")
            elif mode == "collection":
                lst = ex.listing()
                assert lst is None or all(Path(index.folder) in Path(p).parents for p in lst[0])
                assert "0 images. Click" not in text

    @invariant()
    def an_open_folder_is_indexed_or_being_indexed_or_says_why_not(self) -> None:
        f, key = self.ex.folder, self.ex.model.key
        if f.index is not None:
            assert f.indexing or f.index_ready(key) or f.why_not, (
                f"{f.index.folder.name} is neither indexed, nor being indexed, nor says why")
            if len(f.index.paths) == 0 and not f.indexing:
                assert f.why_not and ("holds no image files" in f.why_not or "stopped" in f.why_not)

    @invariant()
    def status_counts_match_the_collection(self) -> None:
        with self.world.lock:
            f, key, text = self.ex.folder, self.ex.model.key, self.ex.status_text()
            parts = text.split("  ·  ")
            if f.index is None:
                assert parts[0].startswith("No folder open")
                return
            assert parts[0] == f.index.folder.name
            done, files = f.index.counts.get(key), len(f.index.paths)
            numbers = [int(x.replace(",", "")) for x in re.findall(r"[\d,]+", parts[1])]
            if done is not None and numbers:
                assert done in numbers and all(x in (done, files) for x in numbers), (parts[1], done, files)

    @invariant()
    def no_worker_runs_for_a_folder_that_is_not_open(self) -> None:
        index = self.ex.folder.index
        for t in self.ex.tasks():
            if t.running() and t.running_tag is not None and t.running_tag[0] is not index:
                assert t.cancelled(), f"a {t.name} task runs for {t.running_tag[0].folder.name}, not open"
            assert t.pending_tag is None or t.pending_tag[0] is index


def _run(machine: type[ExplorerMachine], tmp_path: Path, **kwargs) -> None:
    machine.world = World(tmp_path)
    run_state_machine_as_test(machine, settings=settings(
        deadline=None, derandomize=True, database=None, print_blob=False,
        suppress_health_check=list(HealthCheck), **kwargs))


def test_the_controllers_keep_one_consistent_state(qapp, tmp_path):
    """At least 2,000 steps (deterministic: derandomized), every invariant checked after each."""
    STEPS["n"] = 0
    t0 = time.monotonic()
    _run(ExplorerMachine, tmp_path, max_examples=100, stateful_step_count=25)
    print(f"{STEPS['n']} steps in {time.monotonic() - t0:.1f} s")
    assert STEPS["n"] >= 2000


def test_the_machine_finds_main_s_never_indexed_folder(qapp, tmp_path):
    """Against main's indexing check the same machine fails: a folder opened while another is indexing
    is never indexed and says nothing (issue 24 item 1)."""

    class Legacy(ExplorerMachine):
        legacy = True

    with pytest.raises(AssertionError, match="neither indexed, nor being indexed"):
        _run(Legacy, tmp_path, max_examples=100, stateful_step_count=25, phases=[Phase.generate, Phase.shrink])
