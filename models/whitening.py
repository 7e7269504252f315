"""Whitening learned from a set of descriptors, stored with its parameters: ``apply(x) = (x - mean) @ P.T``.

Two ways to learn ``P`` (D', D), both with a shrinkage ``a`` of the covariance towards a multiple of the
identity, ``(1 - a) S + a (tr S / D) I``, and a rank cap ``dim`` (the strongest D' directions):

- :meth:`PCAWhitening.fit` (PCA-whitening, unlabelled): ``P = diag(eigval^-1/2) V.T`` of the covariance
  of the vectors, so whitened training vectors have (nearly) identity covariance.
- :meth:`PCAWhitening.fit_lw` (learned whitening, Lw, Radenović, Tolias & Chum 2018, as
  cnnimageretrieval-pytorch's ``whitenlearn``): whiten by the within-class covariance of labelled
  vectors ``S_w`` (``S_w^-1/2``), then rotate onto the principal directions of the whitened data (PCA,
  no scaling) and keep the first ``dim``. Directions in which images of one class vary are damped,
  directions that separate classes kept.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

_FORMAT = "retrieval-explorer/pca-whitening"
_VERSION = 1
#: the widest vector a whitening file may claim (the widest backbone's features are 2,048-d): a header that
#: says more is refused before anything is allocated
MAX_DIM = 1 << 15
#: the longest JSON header a whitening file may hold (its meta is a few hundred bytes)
MAX_HEADER_CHARS = 1 << 20
#: a whitening whose projection's rank falls below this share of min(its output dims, _RANK_PROBE) is degenerate
_RANK_SHARE = 0.5
_RANK_PROBE = 128


class WhiteningFileError(ValueError):
    """A whitening file that is damaged, foreign or of another version."""


class PCAWhitening:
    """mean (D,), projection (D', D); ``meta`` is a small JSON-able dict (source, counts)."""

    def __init__(self, mean: np.ndarray, projection: np.ndarray, eigenvalues: np.ndarray | None = None,
                 meta: dict | None = None) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.projection = np.asarray(projection, dtype=np.float32)
        if self.mean.ndim != 1 or self.projection.ndim != 2 or self.projection.shape[1] != self.mean.shape[0]:
            raise ValueError(f"whitening shapes do not fit: mean {self.mean.shape}, projection {self.projection.shape}")
        self.eigenvalues = None if eigenvalues is None else np.asarray(eigenvalues, dtype=np.float32)
        self.meta = dict(meta or {})
        self._torch_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def method(self) -> str:
        """"pca" or "lw" (files written before Lw existed are PCA-whitenings)."""
        return str(self.meta.get("method", "pca"))

    @classmethod
    def fit(cls, X: np.ndarray | torch.Tensor, dim: int | None = None, eps: float = 1e-6,  # noqa: N803
            meta: dict | None = None, shrinkage: float = 0.0) -> PCAWhitening:
        """PCA-whitening of vectors X (N, D); keep the ``dim`` strongest directions (all when None);
        the covariance shrunk by ``shrinkage`` in [0, 1] towards a multiple of the identity first."""
        X, n, d, dim = _check_fit(X, dim, shrinkage)  # noqa: N806
        mean = X.mean(axis=0)
        Xc = X - mean  # noqa: N806
        cov = _shrink(Xc.T @ Xc / n, shrinkage)
        eigval, eigvec = _top_eigen(cov, dim)
        projection = (eigvec / np.sqrt(eigval + _floor(eigval, eps))).T
        info = {"method": "pca", "n_vectors": int(n), "in_dim": int(d), "out_dim": int(dim),
                "shrinkage": float(shrinkage)}
        info.update(meta or {})
        return cls(mean, projection, eigval, info)

    @classmethod
    def fit_lw(cls, X: np.ndarray | torch.Tensor, labels: np.ndarray | list, dim: int | None = None,  # noqa: N803
               shrinkage: float = 0.0, eps: float = 1e-6, meta: dict | None = None) -> PCAWhitening:
        """Learned whitening (Lw) of vectors X (N, D) with class ``labels`` (N,): the within-class
        covariance (shrunk by ``shrinkage`` towards a multiple of the identity) whitened away, then
        the PCA rotation of the whitened vectors, the first ``dim`` directions kept (all when None).
        Needs at least two classes and one class with two vectors."""
        return cls.fit_lw_many(X, labels, (shrinkage,), dim=dim, eps=eps, meta=meta)[0]

    @classmethod
    def fit_lw_many(cls, X: np.ndarray | torch.Tensor, labels: np.ndarray | list,  # noqa: N803
                    shrinkages: tuple[float, ...] | list[float], dim: int | None = None, eps: float = 1e-6,
                    meta: dict | None = None) -> list[PCAWhitening]:
        """:meth:`fit_lw` for several shrinkages, the covariances computed once: one whitening each."""
        X, n, d, dim = _check_fit(X, dim, 0.0)  # noqa: N806
        for a in shrinkages:
            _check_fit(X[:2], None, a)
        labels = np.asarray([str(v) for v in labels])
        if labels.shape != (n,):
            raise ValueError(f"learned whitening needs one label per vector: {labels.shape[0]} labels, {n} vectors")
        classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2 or counts.max() < 2:
            raise ValueError("learned whitening needs at least two classes and a class with two or more images, "
                             f"got {len(classes)} class(es) of at most {counts.max()} image(s)")
        centroids = np.zeros((len(classes), d))
        np.add.at(centroids, codes, X)
        centroids /= counts[:, None]
        mean = X.mean(axis=0)
        Xc = X - mean  # noqa: N806
        total = Xc.T @ Xc / n
        # within-class scatter = total scatter - between-class scatter (no second (N, D) copy)
        between = (centroids - mean).T @ ((centroids - mean) * counts[:, None]) / n
        within = total - between
        out = []
        # (1 - a) S_w + a (tr S_w / D) I has the eigenvectors of S_w and eigenvalues (1 - a) l + a tr / D:
        # one decomposition serves every shrinkage
        raw_val, w_vec = _top_eigen(within, d)
        mean_var = float(np.trace(within)) / d
        for a in shrinkages:
            w_val = (1.0 - a) * raw_val + a * mean_var if a > 0 else raw_val
            # S_w^-1/2 up to a rotation (D, D); only a numerically null direction is floored (shrinkage
            # is the regulariser of this step)
            inv_sqrt = (w_vec / np.sqrt(w_val + _floor(w_val, 1e-12, 1e-12))).T
            eigval, eigvec = _top_eigen(inv_sqrt @ total @ inv_sqrt.T, dim)
            projection = eigvec.T @ inv_sqrt
            info = {"method": "lw", "n_vectors": int(n), "n_classes": int(len(classes)), "in_dim": int(d),
                    "out_dim": int(dim), "shrinkage": float(a)}
            info.update(meta or {})
            out.append(cls(mean, projection, eigval, info))
        return out

    def degenerate(self) -> str | None:
        """Why this whitening would destroy the vectors (None: it would not): a projection of zeros (every
        score 0), or of a rank far below its output dimension (every vector squeezed onto a few directions).
        The rank is probed on a random sketch of at most 128 columns: a few milliseconds at 1280 x 1280."""
        proj = self.projection.astype(np.float64)
        if not np.any(proj):
            return "its projection is all zeros (every score would be 0)"
        k = min(proj.shape[0], proj.shape[1], _RANK_PROBE)
        probe = np.random.default_rng(0).standard_normal((proj.shape[1], k))
        s = np.linalg.svd(proj @ probe, compute_uv=False)
        rank = int((s > s[0] * 1e-9).sum())
        if rank < max(1.0, _RANK_SHARE * k):
            return (f"its projection has rank {rank} for {proj.shape[0]} output dimensions (degenerate: the "
                    "vectors would be squeezed onto a few directions)")
        return None

    def truncated(self, dim: int) -> PCAWhitening:
        """The same whitening keeping only its first ``dim`` output directions (the strongest)."""
        if not 1 <= dim <= self.out_dim:
            raise ValueError(f"whitening dim must be in 1..{self.out_dim}, got {dim}")
        eig = None if self.eigenvalues is None else self.eigenvalues[:dim]
        return type(self)(self.mean, self.projection[:dim], eig, {**self.meta, "out_dim": int(dim)})

    def apply(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Whiten x (..., D) -> (..., D'); numpy in, numpy out; torch in, torch out."""
        if isinstance(x, torch.Tensor):
            return self.apply_torch(x)
        x = np.asarray(x, dtype=np.float32)
        self._check_dim(x.shape)
        return (x - self.mean) @ self.projection.T

    def _check_dim(self, shape: tuple) -> None:
        if len(shape) == 0 or shape[-1] != self.in_dim:
            raise ValueError(f"this whitening takes {self.in_dim}-d vectors (..., {self.in_dim}), got shape "
                             f"{tuple(shape)}: it was learned for another descriptor or backbone")

    def apply_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten a tensor x (..., D) -> (..., D') on x's device, in x's floating dtype."""
        self._check_dim(tuple(x.shape))
        key = (x.device, x.dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = (
                torch.as_tensor(self.mean, device=x.device, dtype=x.dtype),
                torch.as_tensor(self.projection, device=x.device, dtype=x.dtype),
            )
        mean, proj = self._torch_cache[key]
        return (x - mean) @ proj.T

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every parameter as the named arrays of a whitening file (.npz; :meth:`load` reads it back): mean,
        projection, [eigenvalues], and a JSON header (format, version, meta). The program writes them
        atomically with engine.whitening.save_whitening."""
        header = json.dumps({"format": _FORMAT, "version": _VERSION, "meta": self.meta})
        arrays = {"mean": self.mean, "projection": self.projection, "header": np.array(header)}
        if self.eigenvalues is not None:
            arrays["eigenvalues"] = self.eigenvalues
        return arrays

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAWhitening:
        """Read a file of :meth:`to_arrays` (written by engine.whitening.save_whitening); a damaged or
        foreign file raises WhiteningFileError (a ValueError) naming the file. The type and shape of
        everything read are checked before use."""
        path = Path(path)
        if not path.is_file():
            if path.exists():  # a FIFO, a device, a folder: never opened (a FIFO would wait for a writer)
                raise WhiteningFileError(f"{path} is not a regular file: give the whitening file (.npz) itself")
            raise FileNotFoundError(f"whitening file not found: {path}")

        def refuse(why: str) -> WhiteningFileError:
            return WhiteningFileError(f"{path} is not a usable whitening file: {why}; learn it again")

        _check_member_sizes(path, refuse)  # absurd sizes refused before numpy allocates anything
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise refuse("it holds a single array, not a whitening archive (.npz)")
            with data:
                missing = [k for k in ("header", "mean", "projection") if k not in data.files]
                if missing:
                    raise refuse(f"it has no {', '.join(repr(k) for k in missing)}")
                raw_header = data["header"]
                mean, projection = data["mean"], data["projection"]
                eig = data["eigenvalues"] if "eigenvalues" in data.files else None
        except WhiteningFileError:
            raise
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise WhiteningFileError(
                f"{path} is not a readable whitening file ({type(exc).__name__}: {exc}); learn it again"
            ) from exc
        if raw_header.ndim != 0 or raw_header.dtype.kind not in "US":
            raise refuse(f"its header is a {raw_header.dtype} array of shape {raw_header.shape}, not a text")
        try:
            text = raw_header.item()
            header = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise refuse(f"its header is not valid JSON ({type(exc).__name__})") from exc
        if not isinstance(header, dict):
            raise refuse(f"its header is a JSON {type(header).__name__}, not an object")
        if header.get("format") != _FORMAT:
            raise WhiteningFileError(f"{path} is not a Retrieval Explorer whitening file")
        version = header.get("version")
        if version != _VERSION or isinstance(version, bool):
            raise WhiteningFileError(f"{path} has whitening format version {version!r}, "
                                     f"this program reads version {_VERSION}; learn it again")
        meta = header.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise refuse(f"its 'meta' is a JSON {type(meta).__name__}, not an object")
        for name, arr, ndim in (("mean", mean, 1), ("projection", projection, 2), ("eigenvalues", eig, 1)):
            if arr is None:
                continue
            if arr.dtype.kind not in "fiu":
                raise refuse(f"its {name} holds {arr.dtype} values, not real numbers")
            if arr.ndim != ndim or 0 in arr.shape:
                raise refuse(f"its {name} has shape {arr.shape}, expected {ndim} non-empty dimension(s)")
            if not np.all(np.isfinite(arr)):
                raise WhiteningFileError(f"{path} holds non-finite numbers (damaged); learn it again")
        if projection.shape[1] != mean.shape[0]:
            raise refuse(f"its projection {projection.shape} does not fit its mean {mean.shape}")
        if eig is not None and eig.shape[0] != projection.shape[0]:
            raise refuse(f"it has {eig.shape[0]} eigenvalues for {projection.shape[0]} directions")
        try:
            out = cls(mean, projection, eig, meta)
        except ValueError as exc:
            raise WhiteningFileError(f"{path}: {exc}; learn it again") from exc
        why = out.degenerate()
        if why:
            raise refuse(why)
        return out


def _check_member_sizes(path: Path, refuse) -> None:
    """Every array of the archive ``path`` read from its .npy header only (no data read, nothing allocated):
    a dimension above MAX_DIM, a header text above MAX_HEADER_CHARS, or more bytes claimed than the
    archive member holds -> ``refuse(why)`` raised; so is a file that is not a zip archive (a bare .npy
    would be allocated whole by np.load before anything could be checked)."""
    from numpy.lib import format as npy

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            single = fh.read(6) == b"\x93NUMPY"
        raise refuse("it holds a single array, not a whitening archive (.npz)" if single
                     else "it is not a whitening archive (.npz): damaged, or another kind of file")
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as fh:
                    version = npy.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = npy.read_array_header_2_0(fh)
                    else:
                        raise refuse(f"its {name} is stored in .npy format {version}, which it never writes")
                nbytes = dtype.itemsize
                for n in shape:
                    nbytes *= int(n)
                if any(int(n) > MAX_DIM for n in shape):
                    raise refuse(f"its {name} claims shape {tuple(shape)}: more than {MAX_DIM:,} per dimension")
                if name == "header" and nbytes > 4 * MAX_HEADER_CHARS:
                    raise refuse(f"its header claims {nbytes:,} bytes (a whitening header is a few hundred)")
                if nbytes > info.file_size:
                    raise refuse(f"its {name} claims {nbytes:,} bytes of data but holds {info.file_size:,}")
    except WhiteningFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError) as exc:
        raise refuse(f"its arrays cannot be read ({type(exc).__name__}: {exc})") from exc


def _check_fit(X, dim: int | None, shrinkage: float) -> tuple[np.ndarray, int, int, int]:  # noqa: N803
    X = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)  # noqa: N806
    X = X.astype(np.float64)  # noqa: N806
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"whitening needs at least 2 vectors (N, D), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("whitening: the vectors contain NaN or infinite values")
    n, d = X.shape
    dim = d if dim is None else int(dim)
    if not 1 <= dim <= d:
        raise ValueError(f"whitening dim must be in 1..{d}, got {dim}")
    if not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"whitening shrinkage must be in [0, 1], got {shrinkage}")
    return X, n, d, dim


def _shrink(cov: np.ndarray, a: float) -> np.ndarray:
    """(1 - a) cov + a (tr cov / D) I."""
    if a <= 0:
        return cov
    d = cov.shape[0]
    return (1.0 - a) * cov + a * (np.trace(cov) / d) * np.eye(d)


def _top_eigen(cov: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``dim`` largest eigenvalues (clipped at 0) of a symmetric matrix and their eigenvectors (D, dim)."""
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:dim]
    return np.clip(eigval[order], 0.0, None), eigvec[:, order]


def _floor(eigval: np.ndarray, eps: float, relative: float = 1e-6) -> float:
    """A direction with (almost) no variance would be blown up: floor it relative to the largest."""
    return max(eps, float(eigval[0]) * relative) if eigval.size else eps
