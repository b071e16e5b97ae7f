"""The training engine on a tiny synthetic task: it learns, it is deterministic, it resumes exactly,
a divergence is a result, and bad combinations are clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnflash.models.builder import build_module
from nnflash.models.datasets import Dataset
from nnflash.models.space import get_space
from nnflash.models.spec import Cell, DenseSpec, MlpSpec
from nnflash.models.training import (
    EpochInfo,
    TrainingError,
    augment,
    check_compatible,
    lr_at,
    train_spec,
)
from nnflash.models.training_protocol import TrainingProtocol


def quadrants(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """1x8x8 noise; class k brightens quadrant k. Separable, but only by looking at the image."""
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 90, (n, 1, 8, 8))
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 120
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    train_x, train_y = quadrants(700, rng)
    test_x, test_y = quadrants(200, rng)
    return Dataset.from_arrays("quadrants", train_x, train_y, test_x, test_y, num_classes=4, val_size=100)


SPEC = DenseSpec((Cell(2, 4, 0), Cell(3, 8, 4)), input_shape=(1, 8, 8), num_classes=4)
PROTO = TrainingProtocol(
    name="tiny", train_size=576, epochs=3, batch_size=32, lr=0.05, schedule="linear", warmup_fraction=0.1
)


@pytest.fixture(scope="module")
def baseline(data: Dataset):
    return train_spec(SPEC, data, PROTO, seed=0)


def test_a_run_learns_and_reports(baseline, data: Dataset) -> None:
    r = baseline
    assert r.status == "ok" and r.reason is None
    assert r.val_accuracy is not None and r.test_accuracy is not None
    assert r.val_accuracy > 0.8 and r.test_accuracy > 0.8  # chance is 0.25
    assert len(r.train_loss) == 3 and r.train_loss[-1] < r.train_loss[0]
    assert (r.train_images, r.val_images, r.test_images) == (576, 100, 200)
    assert r.epochs_done == 3 and r.resumed_from_epoch == 0
    assert r.spec_id == SPEC.spec_id and r.dataset == "quadrants" and r.dataset_fingerprint == data.fingerprint
    assert r.protocol_hash == PROTO.protocol_hash and r.protocol["name"] == "tiny"
    assert r.torch_device == "cpu" and r.threads >= 1
    assert set(r.versions) >= {"torch", "numpy", "python", "nnflash"}
    assert r.images_per_s > 0 and r.wall_s >= r.train_s > 0
    record = json.loads(json.dumps(r.to_dict()))
    assert "state_dict" not in record and record["test_accuracy"] == r.test_accuracy


def test_final_weights_are_kept_and_saved(baseline, data: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    baseline.save_state_dict(path)
    module = build_module(SPEC)
    module.load_state_dict(torch.load(path, weights_only=True))
    x = torch.from_numpy(data.test_x[:64])
    with torch.inference_mode():
        pred = module(data.normalization().apply(x)).argmax(1).numpy()
    assert (pred == data.test_y[:64]).mean() > 0.8


def test_same_seed_same_result_other_seed_other_result(baseline, data: Dataset) -> None:
    again = train_spec(SPEC, data, PROTO, seed=0)
    assert again.train_loss == baseline.train_loss
    assert (again.val_accuracy, again.test_accuracy) == (baseline.val_accuracy, baseline.test_accuracy)
    assert all(torch.equal(again.state_dict[k], v) for k, v in baseline.state_dict.items())
    other = train_spec(SPEC, data, PROTO, seed=1)
    assert other.train_loss != baseline.train_loss
    assert other.protocol_hash == baseline.protocol_hash  # the seed is not part of the protocol


def test_global_rng_is_left_alone(data: Dataset) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_spec(SPEC, data, dataclasses.replace(PROTO, epochs=1, train_size=64), seed=5)
    assert torch.equal(torch.rand(3), expected)


class Interrupted(Exception):
    pass


def test_resume_after_interruption_equals_an_uninterrupted_run(baseline, data: Dataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    seen: list[EpochInfo] = []

    def stop_after_two(info: EpochInfo) -> None:
        seen.append(info)
        if info.epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_spec(SPEC, data, PROTO, seed=0, on_epoch=stop_after_two, checkpoint_path=ckpt)
    assert [i.epoch for i in seen] == [1, 2] and seen[1].images == 2 * 576 and seen[0].epochs == 3
    assert ckpt.exists() and not list(tmp_path.glob(".*tmp*"))
    resumed = train_spec(SPEC, data, PROTO, seed=0, on_epoch=seen.append, checkpoint_path=ckpt)
    assert resumed.resumed_from_epoch == 2 and [i.epoch for i in seen] == [1, 2, 3]
    assert resumed.train_loss == baseline.train_loss
    assert (resumed.val_accuracy, resumed.test_accuracy) == (baseline.val_accuracy, baseline.test_accuracy)
    assert all(torch.equal(resumed.state_dict[k], v) for k, v in baseline.state_dict.items())


def test_checkpoint_of_another_training_or_corrupt_is_refused(data: Dataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    proto = dataclasses.replace(PROTO, epochs=1, train_size=64)
    train_spec(SPEC, data, proto, seed=0, checkpoint_path=ckpt)
    with pytest.raises(TrainingError, match="checkpoint of another training \\(seed 0, this run 1\\)"):
        train_spec(SPEC, data, proto, seed=1, checkpoint_path=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable training checkpoint"):
        train_spec(SPEC, data, proto, seed=0, checkpoint_path=ckpt)


def test_divergence_is_a_result_not_an_exception(data: Dataset) -> None:
    mlp = MlpSpec((Cell(2, 16, 0),), input_shape=(64,), num_classes=4)
    proto = TrainingProtocol(epochs=2, batch_size=32, train_size=576, lr=1e6, schedule="constant", weight_decay=0)
    r = train_spec(mlp, data, proto, seed=0)
    assert r.status == "diverged"
    assert r.reason is not None and "training loss became" in r.reason and "epoch 1" in r.reason
    assert r.val_accuracy is None and r.test_accuracy is None and r.state_dict is None
    assert r.epochs_done == 0
    with pytest.raises(TrainingError, match="no weights to save"):
        r.save_state_dict("/nonexistent/w.pt")


def test_mlp_takes_flattened_images(data: Dataset) -> None:
    mlp = MlpSpec((Cell(2, 16, 0),), input_shape=(64,), num_classes=4)
    proto = TrainingProtocol(epochs=2, batch_size=32, train_size=576, lr=0.01, optimizer="adamw", momentum=0.9)
    r = train_spec(mlp, data, proto, seed=0)
    assert r.status == "ok" and r.test_accuracy is not None and r.test_accuracy > 0.6


def test_augmentation_and_cosine_run(data: Dataset) -> None:
    proto = dataclasses.replace(PROTO, epochs=1, augmentation="crop-flip", schedule="cosine", label_smoothing=0.1)
    r = train_spec(SPEC, data, proto, seed=0)
    assert r.status == "ok" and len(r.train_loss) == 1


def test_augment_shifts_and_flips_whole_images() -> None:
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.uint8).reshape(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, "flip", g)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    out = augment(x, "crop", torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(2):  # a shift by (dy, dx) with |d| <= 1, zero fill
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        assert any(torch.equal(out[i], padded[:, a : a + 8, b : b + 8]) for a in range(3) for b in range(3))


def test_learning_rate_schedule() -> None:
    p = TrainingProtocol(lr=0.1, schedule="linear", warmup_fraction=0.1)
    assert lr_at(p, 0, 100) == pytest.approx(0.01)
    assert lr_at(p, 9, 100) == pytest.approx(0.1)
    assert lr_at(p, 10, 100) == pytest.approx(0.1)
    assert lr_at(p, 99, 100) == pytest.approx(0.1 / 90)
    c = TrainingProtocol(lr=0.1, schedule="cosine")
    assert lr_at(c, 0, 100) == pytest.approx(0.1) and lr_at(c, 50, 100) == pytest.approx(0.05)
    assert lr_at(TrainingProtocol(lr=0.1, schedule="constant"), 77, 100) == 0.1


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            DenseSpec((Cell(2, 4, 0),), input_shape=(3, 8, 8), num_classes=4),
            "input shape 3x8x8 does not fit dataset quadrants (1x8x8)",
        ),
        (DenseSpec((Cell(2, 4, 0),), input_shape=(1, 8, 8), num_classes=10), "10 classes, dataset quadrants has 4"),
        (MlpSpec((Cell(2, 4, 0),), input_shape=(784,), num_classes=4), "input shape 784 does not fit"),
    ],
)
def test_spec_must_fit_the_dataset(data: Dataset, spec, message: str) -> None:
    with pytest.raises(TrainingError) as e:
        train_spec(spec, data, PROTO, seed=0)
    assert message in str(e.value)


def test_sizes_and_arguments_are_checked(data: Dataset) -> None:
    with pytest.raises(TrainingError, match="train_size 5000 but dataset quadrants's training split has 600"):
        train_spec(SPEC, data, dataclasses.replace(PROTO, train_size=5000), seed=0)
    with pytest.raises(TrainingError, match="val_size 101 but"):
        train_spec(SPEC, data, dataclasses.replace(PROTO, val_size=101), seed=0)
    with pytest.raises(TrainingError, match="batch_size 64 exceeds the 50 training images"):
        train_spec(SPEC, data, dataclasses.replace(PROTO, train_size=50, batch_size=64), seed=0)
    with pytest.raises(TrainingError, match="seed: must be a non-negative integer"):
        train_spec(SPEC, data, PROTO, seed=-1)
    with pytest.raises(TrainingError, match="torch device: 'tpu' is not supported|unknown device 'tpu'"):
        train_spec(SPEC, data, PROTO, seed=0, torch_device="tpu")


def test_flash_fmnist_specs_fit_28x28_grey_datasets() -> None:
    space = get_space("flash-fmnist")
    grey = np.zeros((12, 1, 28, 28), np.uint8)
    labels = np.arange(12) % 10
    fmnist_like = Dataset.from_arrays("fashion-mnist", grey, labels, grey, labels, num_classes=10, val_size=2)
    for spec in space.sample(3, seed=0):
        check_compatible(spec, fmnist_like)
        out = build_module(spec)(torch.zeros(2, 1, 28, 28))
        assert out.shape == (2, 10)
    with pytest.raises(TrainingError, match="does not fit dataset fashion-mnist"):
        check_compatible(get_space("flash").sample(1)[0], fmnist_like)
