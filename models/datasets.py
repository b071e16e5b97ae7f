"""Image-classification datasets read from their standard file formats into memory (never downloaded).

==============  ======================================================  ===========  =======
name            files (in the data directory)                           input        classes
==============  ======================================================  ===========  =======
fashion-mnist   ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``   1x28x28      10
mnist           the same four IDX files                                 1x28x28      10
cifar10         ``data_batch_1`` .. ``data_batch_5``, ``test_batch``    3x32x32      10
cifar100        ``train``, ``test``                                     3x32x32      100
==============  ======================================================  ===========  =======

``fashion-mnist`` is the embedded default: Debian's package ``dataset-fashion-mnist`` installs it
under ``/usr/share/datasets/fashion-mnist/`` (``scripts/install_system_deps.sh`` does so as root).
The other datasets have no default directory: pass ``data_dir`` (``--data-dir``), which overrides
every default. Nothing here downloads anything; a missing file is a one-line ``DatasetError`` naming
what to download and where to put it.

IDX (LeCun's format): a big-endian header -- magic ``0x00000803`` (unsigned bytes, 3 dimensions),
count, rows, cols for images (16 bytes); magic ``0x00000801`` and count for labels (8 bytes) --
followed by the uint8 payload. The reader checks the magic, the dimensions, that images and labels
agree in number, that the payload is exactly as long as the header says (a truncated or padded file
is an error) and that every label is a valid class. Files may be gzipped or not. Integrity is judged
on the *decompressed* content: Debian recompressed the archives, so checksums of the ``.gz`` files
differ from upstream's while the data are identical. ``Dataset.fingerprint`` is a sha256 over the
decompressed arrays, and the embedded default is checked against the digest of the official files.

CIFAR python batches are pickles (``pickle`` with ``encoding='bytes'``, as the official page says).
Unpickling can run code, so the reader's unpickler admits only what a CIFAR batch holds (numpy
arrays, built-in containers) and refuses everything else.

A ``Dataset`` holds uint8 images ``(N, C, H, W)`` and uint8 labels in memory: the training split, a
validation split carved from the training set by a seeded permutation (``val_size`` images; the rest
of the training split stays in that shuffled order, so the first ``n`` images are a fixed random
subset), and the test set, kept apart. ``Normalization`` turns uint8 batches into float tensors with
the per-channel mean and standard deviation of the training split.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from nnflash.models.errors import NnflashError

if TYPE_CHECKING:
    import torch


class DatasetError(NnflashError, ValueError):
    """A dataset is unknown, missing, or its files are malformed. The message names the file."""


# ------------------------------------------------------------------------------------ catalogue

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# sha256 of the decompressed official Fashion-MNIST files (the content, not Debian's recompressed
# archives), checked when the embedded default is read.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset name means: its shape, classes, default directory and how to get the files."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    default_dir: Optional[Path]
    how_to_get: str


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        (1, 28, 28),
        10,
        FASHION_MNIST_DIR,
        "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist, or "
        "scripts/install_system_deps.sh as root), or put the four *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist in a folder and pass it as the data directory",
    ),
    "mnist": DatasetInfo(
        "mnist",
        (1, 28, 28),
        10,
        None,
        "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (the MNIST files, e.g. from a mirror of yann.lecun.com/exdb/mnist) into a "
        "folder and pass it as the data directory (--data-dir)",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        None,
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass "
        "the folder cifar-10-batches-py as the data directory (--data-dir)",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        (3, 32, 32),
        100,
        None,
        "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass "
        "the folder cifar-100-python as the data directory (--data-dir)",
    ),
}

#: The search space a dataset uses when no ``--space`` is given (names in ``nnflash.models.space``).
#: cifar100 uses ``flash`` with its 100 classes (the space's shape fits; the classes come from the dataset).
DEFAULT_SPACES: dict[str, str] = {
    "fashion-mnist": "flash-fmnist",
    "mnist": "flash-fmnist",
    "cifar10": "flash",
    "cifar100": "flash",
}

DEFAULT_VAL_SIZE = 5000
DEFAULT_SPLIT_SEED = 0


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DatasetError(f"dataset: unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name]


# ------------------------------------------------------------------------------------ the record


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in memory: uint8 images ``(N, C, H, W)``, uint8 labels, three disjoint splits.

    ``train``/``val`` come from the file's training set (``val`` drawn by ``split_seed``), ``test``
    from its test set. ``fingerprint`` (sha256 over the decompressed arrays of both files' sets)
    identifies the data whatever the archive; ``source`` says where they were read from.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    train_x: np.ndarray = field(repr=False)
    train_y: np.ndarray = field(repr=False)
    val_x: np.ndarray = field(repr=False)
    val_y: np.ndarray = field(repr=False)
    test_x: np.ndarray = field(repr=False)
    test_y: np.ndarray = field(repr=False)
    fingerprint: str = ""
    split_seed: int = DEFAULT_SPLIT_SEED
    source: str = ""
    _norm: dict[str, Normalization] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_arrays(
        cls,
        name: str,
        train_x: np.ndarray,
        train_y: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray,
        *,
        num_classes: int,
        val_size: int = DEFAULT_VAL_SIZE,
        split_seed: int = DEFAULT_SPLIT_SEED,
        source: str = "",
    ) -> Dataset:
        """Validate the arrays of a file's training and test sets and carve the validation split.

        Images: uint8 ``(N, C, H, W)``; labels: integers in ``0..num_classes-1``, one per image.
        """
        for what, x, y in (("training", train_x, train_y), ("test", test_x, test_y)):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype != np.uint8 or x.ndim != 4:
                raise DatasetError(f"{name}: {what} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
            if y.ndim != 1 or len(y) != len(x):
                raise DatasetError(f"{name}: {len(x)} {what} images but labels of shape {y.shape}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise DatasetError(
                    f"{name}: {what} labels must be in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}"
                )
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DatasetError(f"{name}: training images {train_x.shape[1:]} and test images {test_x.shape[1:]} differ")
        if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)):
            raise DatasetError(f"val_size: must be an integer, got {val_size!r}")
        n = len(train_x)
        if not 1 <= val_size < n:
            raise DatasetError(f"val_size: must be in 1..{n - 1} (the training set has {n} images), got {val_size}")
        digest = hashlib.sha256()
        for a in (train_x, train_y, test_x, test_y):
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(a.tobytes())
        perm = np.random.default_rng(split_seed).permutation(n)
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        ty, sy = np.asarray(train_y).astype(np.uint8), np.asarray(test_y).astype(np.uint8)
        return cls(
            name=name,
            input_shape=tuple(int(s) for s in train_x.shape[1:]),  # type: ignore[arg-type]
            num_classes=int(num_classes),
            train_x=np.ascontiguousarray(train_x[train_idx]),
            train_y=ty[train_idx],
            val_x=np.ascontiguousarray(train_x[val_idx]),
            val_y=ty[val_idx],
            test_x=np.array(test_x, dtype=np.uint8, order="C"),  # a writable copy (IDX arrays view the file)
            test_y=sy,
            fingerprint=digest.hexdigest()[:16],
            split_seed=int(split_seed),
            source=source,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.train_y),
            "val": len(self.val_y),
            "test": len(self.test_y),
            "split_seed": self.split_seed,
            "fingerprint": self.fingerprint,
            "source": self.source,
        }

    def normalization(self) -> Normalization:
        """Per-channel mean and std of the training split (computed once, then cached)."""
        if "train" not in self._norm:
            self._norm["train"] = Normalization.from_images(self.train_x)
        return self._norm["train"]


@dataclass(frozen=True)
class Normalization:
    """uint8 images -> float32 ``(x/255 - mean) / std``, per channel (statistics in 0..1 units)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_images(cls, x: np.ndarray, chunk: int = 8192) -> Normalization:
        """Mean and population std per channel of uint8 images ``(N, C, H, W)``, in float64."""
        c = x.shape[1]
        s1, s2 = np.zeros(c), np.zeros(c)
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk].astype(np.float64) / 255.0
            s1 += part.sum(axis=(0, 2, 3))
            s2 += np.square(part).sum(axis=(0, 2, 3))
        count = len(x) * x.shape[2] * x.shape[3]
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
        return cls(tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 (or float 0..255) batch ``(N, C, H, W)`` on any device -> normalized float32."""
        import torch  # here, not at the top: reading a dataset's files needs no torch

        c = len(self.mean)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device).view(1, c, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=x.device).view(1, c, 1, 1)
        return x.float() * scale - shift


# ------------------------------------------------------------------------------------ IDX reader


def _read_bytes(path: Path) -> bytes:
    """The decompressed content of ``path`` (gzip if the name ends with .gz)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({e or type(e).__name__})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None


def parse_idx(data: bytes, where: str, *, images: bool) -> np.ndarray:
    """An IDX image file ``(N, rows, cols)`` or label file ``(N,)`` from its decompressed bytes."""
    header = 16 if images else 8
    magic_want = IDX_IMAGES_MAGIC if images else IDX_LABELS_MAGIC
    kind = "image" if images else "label"
    if len(data) < header:
        raise DatasetError(f"{where}: truncated IDX {kind} file ({len(data)} bytes, the header alone is {header})")
    magic, count = struct.unpack(">II", data[:8])
    if magic != magic_want:
        raise DatasetError(f"{where}: not an IDX {kind} file (magic 0x{magic:08x}, expected 0x{magic_want:08x})")
    dims: tuple[int, ...] = (count,)
    if images:
        rows, cols = struct.unpack(">II", data[8:16])
        if rows == 0 or cols == 0:
            raise DatasetError(f"{where}: IDX image size {rows}x{cols}")
        dims = (count, rows, cols)
    expected = int(np.prod(dims))
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "longer than its header says"
        raise DatasetError(
            f"{where}: {what}: header announces {'x'.join(map(str, dims))} = {expected} bytes, file holds {payload}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str, name: str, info: DatasetInfo) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{name}: {directory / (stem + '.gz')} not found; {info.how_to_get}")


def read_idx_pair(
    directory: Path, prefix: str, name: str, info: DatasetInfo, *, check_sha256: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, rows, cols)`` and labels ``(N,)`` of ``{prefix}-images-idx3-ubyte[.gz]`` and
    ``{prefix}-labels-idx1-ubyte[.gz]``."""
    out = []
    for stem, images in ((f"{prefix}-images-idx3-ubyte", True), (f"{prefix}-labels-idx1-ubyte", False)):
        path = _find_idx(directory, stem, name, info)
        data = _read_bytes(path)
        if check_sha256 and stem in FASHION_MNIST_SHA256:
            got = hashlib.sha256(data).hexdigest()
            if got != FASHION_MNIST_SHA256[stem]:
                raise DatasetError(
                    f"{path}: decompressed content differs from the official Fashion-MNIST "
                    f"(sha256 {got[:16]}..., expected {FASHION_MNIST_SHA256[stem][:16]}...); reinstall the package"
                )
        out.append(parse_idx(data, str(path), images=images))
    x, y = out
    if len(x) != len(y):
        raise DatasetError(f"{name}: {directory}: {len(x)} {prefix} images but {len(y)} {prefix} labels")
    _, h, w = x.shape
    if (1, h, w) != info.input_shape:
        raise DatasetError(
            f"{name}: {directory}: {prefix} images are {h}x{w}, expected {info.input_shape[1]}x{info.input_shape[2]}"
        )
    if len(y) and int(y.max()) >= info.num_classes:
        raise DatasetError(
            f"{name}: {directory}: {prefix} label {int(y.max())} is not a class (0..{info.num_classes - 1})"
        )
    return x[:, None, :, :], y


# ------------------------------------------------------------------------------------ CIFAR reader


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR python batch holds: numpy arrays and dtypes (plus built-ins)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        with warnings.catch_warnings():  # numpy 2 renamed numpy.core to numpy._core
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _load_cifar_batch(path: Path, label_key: bytes, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR python batch (corrupt or truncated: {e})") from None
    if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
        keys = (
            sorted(k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in obj)
            if isinstance(obj, dict)
            else []
        )
        raise DatasetError(
            f"{path}: not a {info.name} python batch (needs keys data and {label_key.decode()}, found {keys})"
        )
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[label_key])
    c, h, w = info.input_shape
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != c * h * w:
        raise DatasetError(f"{path}: data must be uint8 of shape (N, {c * h * w}), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {len(data)} images but labels of shape {labels.shape} ({labels.dtype})")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
        raise DatasetError(f"{path}: labels must be in 0..{info.num_classes - 1}, found {labels.min()}..{labels.max()}")
    # rows are 1024 red, 1024 green, 1024 blue values, each plane row-major
    return data.reshape(len(data), c, h, w), labels.astype(np.uint8)


def _cifar_layout(info: DatasetInfo) -> tuple[list[str], str, bytes]:
    if info.name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"
    return ["train"], "test", b"fine_labels"


def cifar_directory(directory: Path, info: DatasetInfo) -> Path:
    """``directory``, or the extracted tarball's folder inside it when given its parent."""
    folder = "cifar-10-batches-py" if info.name == "cifar10" else "cifar-100-python"
    test_file = _cifar_layout(info)[1]
    if not (directory / test_file).exists() and (directory / folder / test_file).exists():
        return directory / folder
    return directory


def read_cifar(directory: Path, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_files, test_file, label_key = _cifar_layout(info)
    missing = [f for f in [*train_files, test_file] if not (directory / f).is_file()]
    if missing:
        raise DatasetError(f"{info.name}: {directory} lacks {', '.join(missing)}; {info.how_to_get}")
    parts = [_load_cifar_batch(directory / f, label_key, info) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _load_cifar_batch(directory / test_file, label_key, info)
    return train_x, train_y, test_x, test_y


# ------------------------------------------------------------------------------------ entry point


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_size: int = DEFAULT_VAL_SIZE,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> Dataset:
    """Read dataset ``name`` from ``data_dir`` (default: the dataset's embedded directory, if any).

    ``val_size`` training images (drawn with ``split_seed``) become the validation split.
    Raises ``DatasetError`` with one line naming the file and, when files are missing, what to
    download and where to put it.
    """
    info = dataset_info(name)
    if data_dir is None:
        if info.default_dir is None:
            raise DatasetError(f"{name}: no data directory given and none built in; {info.how_to_get}")
        directory = info.default_dir
    else:
        directory = Path(data_dir)
    if not directory.is_dir():
        raise DatasetError(f"{name}: {directory} is not a directory; {info.how_to_get}")
    if name in ("fashion-mnist", "mnist"):
        official = name == "fashion-mnist" and data_dir is None
        train_x, train_y = read_idx_pair(directory, "train", name, info, check_sha256=official)
        test_x, test_y = read_idx_pair(directory, "t10k", name, info, check_sha256=official)
    else:
        directory = cifar_directory(directory, info)
        train_x, train_y, test_x, test_y = read_cifar(directory, info)
    return Dataset.from_arrays(
        name,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=info.num_classes,
        val_size=val_size,
        split_seed=split_seed,
        source=str(directory),
    )
