"""Dataset readers on tiny files generated in the standard formats (IDX, CIFAR python batches),
including corrupt, truncated and missing files; plus the real Fashion-MNIST when it is installed."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nnflash.models.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    Dataset,
    DatasetError,
    Normalization,
    load_dataset,
    parse_idx,
    read_idx_pair,
)
from nnflash.models.errors import NnflashError

# ------------------------------------------------------------------------------------ writers


def idx_images(x: np.ndarray, magic: int = 0x803) -> bytes:
    n, h, w = x.shape
    return struct.pack(">IIII", magic, n, h, w) + x.astype(np.uint8).tobytes()


def idx_labels(y: np.ndarray, magic: int = 0x801) -> bytes:
    return struct.pack(">II", magic, len(y)) + y.astype(np.uint8).tobytes()


def write_idx_dir(
    d: Path, n_train: int = 60, n_test: int = 20, size: int = 28, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": idx_images(arrays["train_x"]),
        "train-labels-idx1-ubyte": idx_labels(arrays["train_y"]),
        "t10k-images-idx3-ubyte": idx_images(arrays["test_x"]),
        "t10k-labels-idx1-ubyte": idx_labels(arrays["test_y"]),
    }
    for stem, data in files.items():
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (d / stem).write_bytes(data)
    return arrays


def write_cifar_dir(d: Path, kind: str = "cifar10", per_batch: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    classes, key = (10, b"labels") if kind == "cifar10" else (100, b"fine_labels")
    names = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    xs, ys = [], []
    for name in [*names, "test_batch" if kind == "cifar10" else "test"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, per_batch)
        obj = {b"batch_label": name.encode(), key: [int(v) for v in y], b"data": x}
        if kind == "cifar100":
            obj[b"coarse_labels"] = [int(v) // 5 for v in y]
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
        xs.append(x)
        ys.append(y)
    return {
        "train_x": np.concatenate(xs[:-1]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate(ys[:-1]),
        "test_x": xs[-1].reshape(-1, 3, 32, 32),
        "test_y": ys[-1],
    }


def all_train(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([ds.train_x, ds.val_x]), np.concatenate([ds.train_y, ds.val_y])


def sorted_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


# ------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_round_trip(tmp_path: Path, name: str, gz: bool) -> None:
    arrays = write_idx_dir(tmp_path, gz=gz)
    ds = load_dataset(name, tmp_path, val_size=10)
    assert ds.name == name and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.train_y), len(ds.val_y), len(ds.test_y)) == (50, 10, 20)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.shape == (50, 1, 28, 28)
    np.testing.assert_array_equal(ds.test_x[:, 0], arrays["test_x"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
    # train + val are a permutation of the file's training set, images and labels kept together
    x, y = all_train(ds)
    want = np.concatenate([arrays["train_x"].reshape(60, -1), arrays["train_y"][:, None]], 1)
    got = np.concatenate([x.reshape(60, -1), y[:, None]], 1)
    np.testing.assert_array_equal(sorted_rows(got), sorted_rows(want))
    assert ds.source == str(tmp_path)


def test_split_is_fixed_by_the_seed_and_configurable(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    a = load_dataset("mnist", tmp_path, val_size=12)
    b = load_dataset("mnist", tmp_path, val_size=12)
    c = load_dataset("mnist", tmp_path, val_size=12, split_seed=1)
    np.testing.assert_array_equal(a.val_x, b.val_x)
    np.testing.assert_array_equal(a.train_y, b.train_y)
    assert not np.array_equal(a.val_x, c.val_x)
    assert a.fingerprint == b.fingerprint == c.fingerprint  # the data, not the split
    assert len(a.val_y) == 12 and len(a.train_y) == 48


@pytest.mark.parametrize("val_size", [0, 60, 61, -1])
def test_bad_val_size(tmp_path: Path, val_size: int) -> None:
    write_idx_dir(tmp_path)
    with pytest.raises(DatasetError, match="val_size: must be in 1..59"):
        load_dataset("mnist", tmp_path, val_size=val_size)


def _rewrite(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


BAD_IDX = {
    "wrong image magic": (
        "train-images-idx3-ubyte.gz",
        lambda a: idx_images(a["train_x"], magic=0x801),
        "not an IDX image file (magic 0x00000801, expected 0x00000803)",
    ),
    "wrong label magic": (
        "t10k-labels-idx1-ubyte.gz",
        lambda a: idx_labels(a["test_y"], magic=0x803),
        "not an IDX label file",
    ),
    "truncated payload": (
        "train-images-idx3-ubyte.gz",
        lambda a: idx_images(a["train_x"])[:-5],
        "truncated: header announces 60x28x28 = 47040 bytes, file holds 47035",
    ),
    "trailing bytes": (
        "train-labels-idx1-ubyte.gz",
        lambda a: idx_labels(a["train_y"]) + b"\0",
        "longer than its header says",
    ),
    "short header": ("t10k-images-idx3-ubyte.gz", lambda a: b"\0\0\x08\x03\0", "the header alone is 16"),
    "count mismatch": (
        "train-labels-idx1-ubyte.gz",
        lambda a: idx_labels(a["train_y"][:59]),
        "60 train images but 59 train labels",
    ),
    "wrong size": (
        "t10k-images-idx3-ubyte.gz",
        lambda a: idx_images(np.zeros((20, 32, 32), np.uint8)),
        "t10k images are 32x32, expected 28x28",
    ),
    "bad label": (
        "train-labels-idx1-ubyte.gz",
        lambda a: idx_labels(np.full(60, 10, np.uint8)),
        "train label 10 is not a class",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_malformed_idx_files_are_clear_errors(tmp_path: Path, case: str) -> None:
    arrays = write_idx_dir(tmp_path)
    fname, make, message = BAD_IDX[case]
    _rewrite(tmp_path / fname, make(arrays))
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", tmp_path, val_size=10)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip file"):
        load_dataset("mnist", tmp_path)
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DatasetError, match="corrupt or truncated gzip file"):
        load_dataset("mnist", tmp_path)


def test_missing_idx_file_names_what_to_get(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz not found" in msg and "--data-dir" in msg and "\n" not in msg


def test_missing_directory_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a directory; install the Debian package dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="mnist: no data directory given and none built in; download"):
        load_dataset("mnist")
    with pytest.raises(
        DatasetError, match="unknown dataset 'svhn' \\(known: cifar10, cifar100, fashion-mnist, mnist\\)"
    ):
        load_dataset("svhn", tmp_path)
    assert issubclass(DatasetError, NnflashError) and issubclass(DatasetError, ValueError)


def test_embedded_default_is_checked_against_the_official_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_dir(tmp_path)  # well-formed files, but not Fashion-MNIST
    monkeypatch.setitem(DATASETS, "fashion-mnist", dataclasses.replace(DATASETS["fashion-mnist"], default_dir=tmp_path))
    with pytest.raises(DatasetError, match="decompressed content differs from the official Fashion-MNIST"):
        load_dataset("fashion-mnist")
    assert (
        load_dataset("fashion-mnist", tmp_path, val_size=10).name == "fashion-mnist"
    )  # a data_dir is structure-checked only


def test_parse_idx_directly() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_images(x), "mem", images=True), x)
    np.testing.assert_array_equal(parse_idx(idx_labels(np.array([1, 2, 3])), "mem", images=False), [1, 2, 3])


# ------------------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path: Path, kind: str) -> None:
    arrays = write_cifar_dir(tmp_path, kind)
    ds = load_dataset(kind, tmp_path, val_size=4)
    n_train = len(arrays["train_y"])
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == (10 if kind == "cifar10" else 100)
    assert (len(ds.train_y), len(ds.val_y), len(ds.test_y)) == (n_train - 4, 4, 8)
    np.testing.assert_array_equal(ds.test_x, arrays["test_x"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
    # the row layout is 1024 red, 1024 green, 1024 blue, each plane row-major
    np.testing.assert_array_equal(ds.test_x[0, 1, 0, :], arrays["test_x"].reshape(-1, 3072)[0, 1024:1056])
    x, y = all_train(ds)
    want = np.concatenate([arrays["train_x"].reshape(n_train, -1), arrays["train_y"][:, None]], 1)
    got = np.concatenate([x.reshape(n_train, -1), y[:, None].astype(np.int64)], 1)
    np.testing.assert_array_equal(sorted_rows(got), sorted_rows(want))


def test_cifar_parent_of_extracted_folder_is_accepted(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, val_size=4)
    assert ds.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar_missing_files_name_what_to_download(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"cifar10: {tmp_path} lacks data_batch_3, test_batch; download cifar-10-python.tar.gz")
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="cifar100: no data directory given.*cifar-100-python.tar.gz"):
        load_dataset("cifar100")


def test_cifar_corrupt_truncated_and_malformed_batches(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_2"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"data_batch_2: not a readable CIFAR python batch \(corrupt or truncated"):
        load_dataset("cifar10", tmp_path)
    path.write_bytes(b"garbage that is no pickle")
    with pytest.raises(DatasetError, match="not a readable CIFAR python batch"):
        load_dataset("cifar10", tmp_path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DatasetError, match=r"not a cifar10 python batch \(needs keys data and labels"):
        load_dataset("cifar10", tmp_path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"data must be uint8 of shape \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DatasetError, match=r"labels must be in 0..9"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __reduce__(self):  # noqa: D401 - would run a command if the reader unpickled it
        return (print, ("pwned",))


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        load_dataset("cifar10", tmp_path)
    assert "pwned" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ records


def test_from_arrays_validates() -> None:
    x = np.zeros((10, 1, 4, 4), np.uint8)
    y = np.zeros(10, np.int64)
    with pytest.raises(DatasetError, match="training images must be uint8"):
        Dataset.from_arrays("t", x.astype(np.float32), y, x, y, num_classes=2, val_size=2)
    with pytest.raises(DatasetError, match="10 test images but labels of shape"):
        Dataset.from_arrays("t", x, y, x, y[:3], num_classes=2, val_size=2)
    with pytest.raises(DatasetError, match="training labels must be in 0..1"):
        Dataset.from_arrays("t", x, y + 2, x, y, num_classes=2, val_size=2)
    ds = Dataset.from_arrays("t", x, y, x, y, num_classes=2, val_size=2)
    assert ds.summary()["train"] == 8


def test_normalization_matches_numpy_and_applies_to_tensors() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (50, 3, 5, 5), dtype=np.uint8)
    norm = Normalization.from_images(x, chunk=7)
    f = x.astype(np.float64) / 255
    np.testing.assert_allclose(norm.mean, f.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, f.std(axis=(0, 2, 3)), rtol=1e-9)
    out = norm.apply(torch.from_numpy(x))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3), unbiased=False).numpy(), 1, atol=1e-5)


def test_normalization_comes_from_the_training_split(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    ds = load_dataset("mnist", tmp_path, val_size=10)
    norm = ds.normalization()
    assert norm is ds.normalization()  # cached
    assert norm.mean[0] == pytest.approx(ds.train_x.mean() / 255)


# ------------------------------------------------------------------------------------ the real files

real = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@real
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion-mnist")  # the embedded default, checked against the official content
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.train_y) + len(ds.val_y) == 60000 and len(ds.test_y) == 10000
    assert len(ds.val_y) == 5000
    _, y = all_train(ds)
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert 0.27 < ds.normalization().mean[0] < 0.30
    # the file's original order: the first training labels of Fashion-MNIST
    _, labels = read_idx_pair(FASHION_MNIST_DIR, "train", "fashion-mnist", DATASETS["fashion-mnist"])
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
