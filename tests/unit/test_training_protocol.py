"""Training protocols: the hash (stable, blind to name, seed and dataset), presets, TOML files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nnflash.models.errors import NnflashError
from nnflash.models.training_protocol import (
    PRESETS,
    ProtocolError,
    TrainingProtocol,
    get_protocol,
    load_protocol_file,
)

# Pinned: a change here means every stored accuracy under these protocols would be orphaned. Change
# the pins only together with ENGINE_REVISION or a deliberate change of the presets.
PINNED = {"quick": "e04bb0b1fb6e", "standard": "44c2db5d4358"}


def test_preset_hashes_are_stable() -> None:
    assert {k: p.protocol_hash for k, p in PRESETS.items()} == PINNED
    assert len(TrainingProtocol().protocol_hash) == 12


def test_hash_excludes_name_and_has_no_seed_or_dataset() -> None:
    q = PRESETS["quick"]
    assert dataclasses.replace(q, name="renamed").protocol_hash == q.protocol_hash
    keys = set(q.hashed_dict())
    assert "name" not in keys and not keys & {"seed", "dataset", "data_dir", "torch_device"}
    assert "engine_revision" in keys


def test_int_and_float_values_hash_alike() -> None:
    assert TrainingProtocol(lr=1).protocol_hash == TrainingProtocol(lr=1.0).protocol_hash
    assert isinstance(TrainingProtocol(weight_decay=0).weight_decay, float)


CHANGES = {
    "train_size": 1000,
    "val_size": 500,
    "epochs": 11,
    "batch_size": 64,
    "optimizer": "adamw",
    "lr": 0.05,
    "momentum": 0.8,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup_fraction": 0.1,
    "label_smoothing": 0.1,
    "augmentation": "flip",
    "precision": "bf16",
}


def test_changes_cover_every_field() -> None:
    assert set(CHANGES) | {"name"} == {f.name for f in dataclasses.fields(TrainingProtocol)}


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_every_field_but_the_name_changes_the_hash(key: str) -> None:
    base = TrainingProtocol()
    assert dataclasses.replace(base, **{key: CHANGES[key]}).protocol_hash != base.protocol_hash


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs: must be a positive integer, got 0"),
        ({"batch_size": True}, "batch_size: must be a positive integer, got true"),
        ({"train_size": 0}, "train_size: must be a positive integer"),
        ({"lr": -1.0}, "lr: must be a positive number, got -1.0"),
        ({"lr": float("nan")}, "lr: must be a positive number"),
        ({"momentum": 1.0}, "momentum: must be a number in [0, 1)"),
        ({"optimizer": "rmsprop"}, 'optimizer: must be one of sgd, adamw, got "rmsprop"'),
        ({"schedule": "step"}, "schedule: must be one of cosine, linear, constant"),
        ({"augmentation": "mixup"}, "augmentation: must be one of none, flip, crop, crop-flip"),
        ({"precision": "fp16"}, "precision: must be one of fp32, bf16"),
        ({"momentum": 0.0}, "nesterov: needs momentum > 0"),
        ({"label_smoothing": 1.0}, "label_smoothing: must be a number in [0, 1)"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        TrainingProtocol(**kwargs)
    assert message in str(e.value)
    assert issubclass(ProtocolError, NnflashError) and issubclass(ProtocolError, ValueError)


def test_toml_file_with_a_base(tmp_path: Path) -> None:
    f = tmp_path / "longer.toml"
    f.write_text('base = "quick"\nepochs = 6\nlr = 0.05\ntrain_size = "none"\n')
    p = load_protocol_file(f)
    assert p.name == "longer"
    assert p == dataclasses.replace(PRESETS["quick"], name="longer", epochs=6, lr=0.05, train_size=None)
    assert get_protocol(str(f)) == p


def test_toml_file_repeating_a_preset_has_its_hash(tmp_path: Path) -> None:
    f = tmp_path / "same.toml"
    lines = []
    for k, v in PRESETS["quick"].to_dict().items():
        if k != "name":
            lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v).replace(chr(39), chr(34))}")
    f.write_text("\n".join(lines) + "\n")
    assert load_protocol_file(f).protocol_hash == PRESETS["quick"].protocol_hash


@pytest.mark.parametrize(
    "text, message",
    [
        ("epoch = 3\n", "epoch: unknown key (allowed: augmentation, base, batch_size"),
        ("epochs = 3.0\n", "epochs: must be an integer, got 3.0"),
        ('lr = "fast"\n', 'lr: must be a number, got "fast"'),
        ("nesterov = 1\n", "nesterov: must be true or false, got 1"),
        ('train_size = "all"\n', 'train_size: must be an integer or "none", got "all"'),
        ('base = "slow"\n', 'base: must be one of quick, standard, got "slow"'),
        ('optimizer = "lbfgs"\n', "optimizer: must be one of sgd, adamw"),
        ("epochs = 0\n", "epochs: must be a positive integer, got 0"),
        ("epochs = [\n", "not valid TOML"),
        ("[protocol]\nepochs = 3\n", "protocol: unknown key"),
    ],
)
def test_bad_toml_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ProtocolError) as e:
        load_protocol_file(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and message in msg and "\n" not in msg


def test_get_protocol_presets_and_missing(tmp_path: Path) -> None:
    assert get_protocol("quick") is PRESETS["quick"]
    assert get_protocol("standard").precision == "bf16"
    with pytest.raises(ProtocolError, match="unknown preset 'fast' \\(presets: quick, standard; or a .toml file\\)"):
        get_protocol("fast")
    with pytest.raises(ProtocolError, match="nope.toml: no such file"):
        get_protocol(str(tmp_path / "nope.toml"))


def test_quick_is_sized_for_a_cpu_and_standard_for_a_gpu() -> None:
    q, s = PRESETS["quick"], PRESETS["standard"]
    assert q.train_size is not None and q.train_size * q.epochs <= 100_000 and q.precision == "fp32"
    assert s.train_size is None and s.epochs >= 20 and s.augmentation == "crop-flip"
