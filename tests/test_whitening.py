"""PCA-whitening: identity covariance on its training data, round trip, refusal of damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.whitening import save_whitening
from models.whitening import PCAWhitening, WhiteningFileError


def correlated(n=500, d=6, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))  # noqa: N806
    return rng.normal(size=(n, d)) @ A + rng.normal(size=d) * 3


def test_whitened_training_vectors_have_identity_covariance():
    X = correlated()  # noqa: N806
    w = PCAWhitening.fit(X)
    Y = w.apply(X)  # noqa: N806
    assert np.allclose(Y.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(np.cov(Y.T, bias=True), np.eye(6), atol=1e-3)


def test_dimension_reduction_keeps_strongest_directions():
    X = correlated()  # noqa: N806
    w = PCAWhitening.fit(X, dim=3)
    assert w.apply(X).shape == (500, 3)
    assert w.out_dim == 3 and w.in_dim == 6
    assert np.all(np.diff(w.eigenvalues) <= 0)


def test_torch_and_numpy_agree():
    X = correlated()  # noqa: N806
    w = PCAWhitening.fit(X, dim=4)
    t = w.apply(torch.tensor(X[:10], dtype=torch.float32))
    assert isinstance(t, torch.Tensor)
    assert np.allclose(t.numpy(), w.apply(X[:10]), atol=1e-4)


def test_save_load_round_trip(tmp_path):
    w = PCAWhitening.fit(correlated(), dim=5, meta={"source": "unit test"})
    path = tmp_path / "w.npz"
    save_whitening(w, path)
    w2 = PCAWhitening.load(path)
    assert np.array_equal(w.mean, w2.mean) and np.array_equal(w.projection, w2.projection)
    assert w2.meta["source"] == "unit test"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_damaged_or_foreign_files_are_refused(tmp_path):
    w = PCAWhitening.fit(correlated())
    good = tmp_path / "w.npz"
    save_whitening(w, good)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WhiteningFileError, match="learn it again"):
        PCAWhitening.load(truncated)
    foreign = tmp_path / "f.npz"
    np.savez(foreign, mean=np.zeros(3), projection=np.eye(3), header=np.array('{"format": "other"}'))
    with pytest.raises(WhiteningFileError, match="not a Retrieval Explorer"):
        PCAWhitening.load(foreign)
    with pytest.raises(FileNotFoundError):
        PCAWhitening.load(tmp_path / "missing.npz")


def test_fit_rejects_too_few_vectors():
    with pytest.raises(ValueError):
        PCAWhitening.fit(np.zeros((1, 4)))


def test_apply_keeps_leading_axes_and_checks_the_dimension():
    w = PCAWhitening.fit(correlated(), dim=4)
    x = correlated(n=12, seed=3).reshape(3, 4, 6)  # (B, R, D) as the R-MAC regions
    y = w.apply(x)
    assert y.shape == (3, 4, 4)
    assert np.allclose(y.reshape(12, 4), w.apply(x.reshape(12, 6)), atol=1e-5)
    with pytest.raises(ValueError, match="6-d"):
        w.apply(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="6-d"):
        w.apply(torch.zeros(2, 5))


def test_pickled_or_non_finite_files_are_refused(tmp_path):
    obj = tmp_path / "obj.npz"  # an object array needs pickle: never loaded
    np.savez(obj, mean=np.zeros(3), projection=np.eye(3), header=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(WhiteningFileError, match="learn it again"):
        PCAWhitening.load(obj)
    w = PCAWhitening.fit(correlated())
    w.projection[0, 0] = np.nan
    bad = tmp_path / "nan.npz"
    save_whitening(w, bad)
    with pytest.raises(WhiteningFileError, match="non-finite"):
        PCAWhitening.load(bad)


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_whitening(PCAWhitening.fit(correlated(), dim=2), path)
    before = path.read_bytes()

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_whitening(PCAWhitening.fit(correlated(), dim=3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_fit_matches_a_hand_worked_2d_example():
    # points on a line y = 2x scaled: covariance [[a, 2a], [2a, 4a]], one direction with variance 5a
    X = np.array([[-1.0, -2.0], [1.0, 2.0], [-1.0, -2.0], [1.0, 2.0]])  # noqa: N806
    w = PCAWhitening.fit(X, dim=1)
    assert np.allclose(w.eigenvalues, [5.0])
    assert np.allclose(np.abs(w.apply(X)).ravel(), 1.0, atol=1e-3)  # +-sqrt(5) / sqrt(5)


def _npz(path, header, mean=None, projection=None, **extra):
    arrays = {"mean": np.zeros(3, np.float32) if mean is None else mean,
              "projection": np.eye(3, dtype=np.float32) if projection is None else projection, **extra}
    if header is not None:
        arrays["header"] = np.array(header if isinstance(header, str) else json.dumps(header))
    np.savez(path, **arrays)
    return path


GOOD_HEADER = {"format": "retrieval-explorer/pca-whitening", "version": 1, "meta": {}}


@pytest.mark.parametrize("name, header, arrays, words", [
    ("list-header", [1, 2, 3], {}, "JSON list"),
    ("string-header", "just text", {}, "not valid JSON"),
    ("number-header", 7, {}, "JSON int"),
    ("version-string", {**GOOD_HEADER, "version": "1"}, {}, "version"),
    ("version-bool", {**GOOD_HEADER, "version": True}, {}, "version"),
    ("meta-list", {**GOOD_HEADER, "meta": [1]}, {}, "'meta'"),
    ("no-header", None, {}, "'header'"),
    ("header-array", None, {"header": np.array(["{}", "{}"])}, "header"),
    ("header-number", None, {"header": np.array(3.0)}, "header"),
    ("mean-strings", GOOD_HEADER, {"mean": np.array(["a", "b", "c"])}, "not real numbers"),
    ("mean-complex", GOOD_HEADER, {"mean": np.zeros(3, complex)}, "not real numbers"),
    ("mean-2d", GOOD_HEADER, {"mean": np.zeros((3, 1))}, "shape"),
    ("projection-1d", GOOD_HEADER, {"projection": np.zeros(3)}, "shape"),
    ("projection-misfit", GOOD_HEADER, {"projection": np.eye(4)}, "does not fit"),
    ("eig-misfit", GOOD_HEADER, {"eigenvalues": np.ones(5)}, "eigenvalues"),
    ("eig-nan", GOOD_HEADER, {"eigenvalues": np.array([1.0, np.nan, 1.0])}, "non-finite"),
])
def test_every_field_is_type_checked(tmp_path, name, header, arrays, words):
    # each of these used to escape as AttributeError / TypeError (e.g. "'list' object has no attribute 'get'")
    path = tmp_path / f"{name}.npz"
    extra = dict(arrays)
    if "header" in extra:
        np.savez(path, mean=np.zeros(3), projection=np.eye(3), header=extra.pop("header"))
    else:
        _npz(path, header, **extra)
    with pytest.raises(WhiteningFileError) as info:
        PCAWhitening.load(path)
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(WhiteningFileError, match="single array"):
        PCAWhitening.load(path)


# --- learned whitening (Lw) and shrinkage ---------------------------------------------------------
def classes(n_classes=12, per_class=30, d=8, seed=0):
    """Labelled vectors whose within-class spread is large along a few nuisance directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)) * 1.0
    nuisance = rng.normal(size=(d, d)) * np.array([4.0, 3.0] + [0.3] * (d - 2))[:, None]
    X = np.concatenate([c + rng.normal(size=(per_class, d)) @ nuisance for c in centres])  # noqa: N806
    labels = np.repeat([f"c{i}" for i in range(n_classes)], per_class)
    return X, labels


def _within(X, labels):  # noqa: N803
    S = np.zeros((X.shape[1], X.shape[1]))  # noqa: N806
    for c in np.unique(labels):
        Xc = X[labels == c] - X[labels == c].mean(axis=0)  # noqa: N806
        S += Xc.T @ Xc
    return S / len(X)


def test_lw_whitens_the_within_class_covariance():
    X, labels = classes()  # noqa: N806
    w = PCAWhitening.fit_lw(X, labels)
    P = w.projection.astype(np.float64)  # noqa: N806
    assert np.allclose(P @ _within(X, labels) @ P.T, np.eye(8), atol=1e-3)
    Y = w.apply(X)  # noqa: N806
    cov = np.cov(Y.T, bias=True)  # the PCA step: the whitened data's covariance is diagonal, decreasing
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3)
    assert np.all(np.diff(np.diag(cov)) <= 1e-6)
    assert w.method == "lw" and w.meta["n_classes"] == 12


def test_lw_matches_the_published_recipe_up_to_signs():
    """cnnimageretrieval-pytorch's whitenlearn written out (Cholesky of the within-class covariance,
    inverted, then the eigenvectors of the whitened scatter): the same directions, up to their sign."""
    X, labels = classes(seed=3)  # noqa: N806
    S = _within(X, labels)  # noqa: N806
    P0 = np.linalg.inv(np.linalg.cholesky(S))  # noqa: N806
    m = X.mean(axis=0)
    df = P0 @ (X - m).T
    eigval, eigvec = np.linalg.eig(df @ df.T)
    order = np.real(eigval).argsort()[::-1]
    ref = (np.real(eigvec[:, order]).T @ P0)[:5]
    got = PCAWhitening.fit_lw(X, labels, dim=5).projection.astype(np.float64)
    signs = np.sign(np.sum(ref * got, axis=1))[:, None]
    assert np.allclose(got, signs * ref, atol=1e-4)


def test_shrinkage_one_reduces_lw_and_pca_to_a_rotation():
    X, labels = classes(seed=5)  # noqa: N806
    for w in (PCAWhitening.fit_lw(X, labels, shrinkage=1.0), PCAWhitening.fit(X, shrinkage=1.0)):
        P = w.projection.astype(np.float64)  # noqa: N806
        gram = P @ P.T  # a multiple of the identity: every direction scaled alike
        assert np.allclose(gram, gram[0, 0] * np.eye(8), atol=1e-6 * gram[0, 0])
    with pytest.raises(ValueError, match="shrinkage"):
        PCAWhitening.fit(X, shrinkage=1.5)


def test_lw_improves_nearest_neighbour_on_nuisance_data():
    X, labels = classes(n_classes=20, per_class=20, seed=7)  # noqa: N806
    tr = np.isin(labels, [f"c{i}" for i in range(10)])

    def r1(V):  # noqa: N803
        V = V / np.linalg.norm(V, axis=1, keepdims=True)  # noqa: N806
        s = V @ V.T
        np.fill_diagonal(s, -np.inf)
        return float(np.mean(labels[~tr][s.argmax(axis=1)] == labels[~tr]))

    w = PCAWhitening.fit_lw(X[tr], labels[tr], shrinkage=0.1)  # learned on other classes
    assert r1(w.apply(X[~tr])) > r1(X[~tr]) + 0.1


def test_lw_needs_classes_and_labels():
    X, labels = classes()  # noqa: N806
    with pytest.raises(ValueError, match="one label per vector"):
        PCAWhitening.fit_lw(X, labels[:-1])
    with pytest.raises(ValueError, match="two classes"):
        PCAWhitening.fit_lw(X, ["a"] * len(X))


def test_lw_round_trip_and_truncation(tmp_path):
    X, labels = classes()  # noqa: N806
    w = PCAWhitening.fit_lw(X, labels, shrinkage=0.3)
    save_whitening(w, tmp_path / "lw.npz")
    w2 = PCAWhitening.load(tmp_path / "lw.npz")
    assert w2.method == "lw" and w2.meta["shrinkage"] == 0.3
    t = w2.truncated(3)
    assert t.out_dim == 3 and np.allclose(t.apply(X[:4]), w2.apply(X[:4])[:, :3], atol=1e-5)
    assert PCAWhitening.fit(X).method == "pca"


def test_fit_lw_many_equals_separate_fits():
    X, labels = classes(seed=9)  # noqa: N806
    many = PCAWhitening.fit_lw_many(X, labels, (0.0, 0.2, 0.6), dim=5)
    for a, w in zip((0.0, 0.2, 0.6), many, strict=True):
        one = PCAWhitening.fit_lw(X, labels, dim=5, shrinkage=a)
        signs = np.sign(np.sum(one.projection * w.projection, axis=1))[:, None]
        assert np.allclose(w.projection, signs * one.projection, atol=1e-4) and w.meta["shrinkage"] == a
