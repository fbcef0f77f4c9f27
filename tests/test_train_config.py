"""Tests for ``stability.paper.train.config``: the config, its checks, and the presets.

References: the paper's hyper-parameters, section 4.1 (footnote 3) for cifar10-nv and
section 4.2 (footnote 4) for ResNet-50; a JSON round trip through the standard library.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from stability.paper.names import NORM_KINDS
from stability.paper.train import config as C


def test_paper_presets_match_the_paper():
    """Section 4.1 footnote 3 (cifar10-nv) and section 4.2 (ResNet-50)."""
    expected = {  # norm: (schedule, final lr, wd); power 2 for poly
        "np": ("poly", 1e-5, 1e-3),
        "trelu": ("poly", 1e-5, 1e-3),
        "wn": ("linear", 1e-4, 0.0),
        "bn": ("linear", 1e-5, 2e-3),
        "none": ("linear", 1e-5, 0.0),
    }
    for norm, (schedule, final, wd) in expected.items():
        c = C.preset_config("cifar10_nv", norm, "paper")
        assert (c.dataset, c.epochs, c.batch_size, c.lr, c.momentum) == (
            "cifar10",
            256,
            128,
            0.01,
            0.9,
        )
        assert (c.schedule, c.final_lr, c.wd) == (schedule, final, wd)
        if schedule == "poly":
            assert c.power == 2.0
        assert c.out == str(Path("runs") / f"cifar10_nv-{norm}-paper")
    for norm in NORM_KINDS:
        c = C.preset_config("resnet50", norm, "paper")
        assert (c.dataset, c.epochs, c.batch_size, c.lr) == ("imagenet", 120, 256, 0.1)
        assert (c.schedule, c.power, c.final_lr, c.wd, c.momentum) == ("poly", 2.0, 0.0, 1e-4, 0.9)


def test_smoke_presets_use_fashion_mnist_and_keep_the_optimizer():
    c = C.preset_config("cifar10_nv", "np", "smoke")
    assert (c.dataset, c.subset, c.width, c.epochs, c.batch_size) == (
        "fashion-mnist", (2048, 512), 0.25, 3, 16)  # fmt: skip
    assert (c.schedule, c.final_lr, c.wd, c.lr) == ("poly", 1e-5, 1e-3, 0.001)
    for norm in ("none", "bn", "wn", "trelu"):  # only NormProp has a smoke learning rate
        assert C.preset_config("cifar10_nv", norm, "smoke").lr == 0.01
    r = C.preset_config("resnet50", "wn", "smoke")
    assert (r.image_size, r.subset, r.width, r.epochs, r.batch_size) == (
        28, (1024, 512), 0.25, 3, 16)  # fmt: skip
    assert r.lr == pytest.approx(0.1 * r.batch_size / 256)
    assert C.preset_config("resnet50", "wn", "smoke", epochs=1).epochs == 1
    assert C.run_name("resnet50", "wn", "smoke") == "resnet50-wn-smoke"


@pytest.mark.parametrize("model", C.MODELS)
def test_mini_presets_scale_down_data_and_width_and_keep_the_papers_optimizer(model):
    for norm in NORM_KINDS:
        paper, mini = C.preset_config(model, norm, "paper"), C.preset_config(model, norm, "mini")
        assert mini.dataset == "fashion-mnist" and mini.width == 0.25 and mini.batch_size == 128
        assert mini.subset[0] // mini.batch_size * mini.epochs == 800  # optimizer steps
        same = ("schedule", "power", "final_lr", "wd", "momentum")
        assert [getattr(mini, f) for f in same] == [getattr(paper, f) for f in same]
        assert mini.lr == pytest.approx(paper.lr * mini.batch_size / paper.batch_size)
    assert C.MINI_SEEDS == (0, 1)
    assert C.run_name(model, "wn", "mini", 1) == f"{model}-wn-mini-seed1"
    assert C.preset_config(model, "wn", "mini", seed=1).out == str(
        Path("runs") / f"{model}-wn-mini-seed1"
    )


def _readme_mini_table() -> dict[str, dict[str, str]]:
    """The README's table of the mini preset: ``{setting: {column: value}}``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = text.split("<!-- mini-preset-table -->")[1].strip().splitlines()
    rows = lines[: next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return table


def test_the_readme_states_the_mini_preset_as_it_is():
    """Every value of the README's mini table is the preset's value (the WN kinds and BN
    share the data, width and steps; their optimizer settings are the paper's)."""
    table = _readme_mini_table()
    columns = {"cifar10-nv": "cifar10_nv", "ResNet-50": "resnet50"}
    for column, model in columns.items():
        c = C.preset_config(model, "wn", "mini")
        n_train, n_test = c.subset
        expected = {
            "data": f"Fashion-MNIST, {n_train} train / {n_test} test images",
            "input": f"{c.image_size or 28} x 28",
            "width": f"{c.width:g}",
            "batch": str(c.batch_size),
            "epochs": str(c.epochs),
            "optimizer steps": str(n_train // c.batch_size * c.epochs),
            "initial lr": f"{c.lr:g}",
            "weight metrics every": f"{c.weight_every} steps",
            "seeds": ", ".join(map(str, C.MINI_SEEDS)),
        }
        for setting, value in expected.items():
            assert table[setting][column] == value, (setting, column)


@pytest.mark.parametrize("model", C.MODELS)
def test_smoke_presets_take_enough_steps_for_batch_norm_running_statistics(model):
    """BatchNorm evaluates with running statistics that keep 0.9^steps of their initial
    value (momentum 0.1); at the networks' batch variance of ~0.002 that share must be
    negligible, else evaluation predicts one class (the smoke run's old 8.6% test top-1)."""
    c = C.preset_config(model, "bn", "smoke")
    steps = c.subset[0] // c.batch_size * c.epochs
    assert steps >= C.SMOKE_MIN_STEPS
    assert 0.9**steps < 0.05 * 0.002


def test_smoke_preset_training_loss_falls(tmp_path, dataset_name):
    """A tiny cut of the smoke preset (32 images, batch 8, 3 epochs of 4 steps, one thread)
    lowers the training loss epoch by epoch."""
    from stability.paper.train import train

    config = C.preset_config("cifar10_nv", "bn", "smoke", dataset=dataset_name, threads=1,
                             subset=(32, 16), batch_size=8, epochs=3, record=False,
                             out=str(tmp_path / "run"))  # fmt: skip
    history = train(config, progress=False).history
    assert list(history["epoch"]) == [1, 2, 3]
    losses = history["train_loss"].to_numpy()
    assert losses[-1] < losses[0] - 0.05, history


@pytest.mark.parametrize(
    "args,message",
    [(("vgg", "bn"), "unknown model"), (("resnet50", "ln"), "normalization kind"),
     (("resnet50", "bn", "huge"), "unknown preset")],
)  # fmt: skip
def test_preset_config_names_a_bad_choice(args, message):
    with pytest.raises(ValueError, match=message):
        C.preset_config(*args)


@pytest.mark.parametrize(
    "bad",
    [
        {"norm": "layer"},
        {"model": "vgg"},
        {"lr": 0.0},
        {"lr": -1.0},
        {"final_lr": 1.0},
        {"schedule": "cosine"},
        {"amp": "fp8"},
        {"epochs": 0},
        {"subset": (1, 2, 3)},
        {"image_size": 32},  # cifar10_nv needs 28x28
        {"width": 0.0},
        {"width": float("inf")},
        {"width": "wide"},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        C.TrainConfig(**bad)


def test_config_round_trips_through_json():
    c = C.TrainConfig(subset=5, include=["conv*"], data_dir=Path("/x"))
    assert c.subset == (5, 5) and c.include == ("conv*",) and c.data_dir == "/x"
    again = C.TrainConfig.from_dict(json.loads(json.dumps(c.to_dict() | {"meta": {}})))
    assert again == c
    assert c.differences(dataclasses.replace(c, device="cuda", lr=0.5)) == {"lr": (0.01, 0.5)}


def test_resumed_config_takes_runtime_fields_and_refuses_the_rest():
    stored = C.TrainConfig(device="cpu", num_workers=0, out="a")
    given = dataclasses.replace(stored, device="cuda", num_workers=2, compile=True, out="b")
    resumed = C.resumed_config(stored, given, "a")
    assert (resumed.device, resumed.num_workers, resumed.compile, resumed.out) == (
        "cuda", 2, True, "b"
    )  # fmt: skip
    assert dataclasses.replace(resumed, device="cpu", num_workers=0, compile=False,
                               out="a") == stored  # fmt: skip
    changed = dataclasses.replace(given, lr=0.5, seed=3)
    with pytest.raises(ValueError, match=r"cannot change --lr \(stored 0.01, given 0.5\), --seed"):
        C.resumed_config(stored, changed, "a", lambda field: "--" + field)
    assert C.RUNTIME_FIELDS.isdisjoint({"lr", "seed", "model", "norm", "epochs", "subset"})


def test_threads_is_a_runtime_field_and_must_be_positive():
    """--threads changes how a run runs, not what it computes: a resume may change it."""
    assert "threads" in C.RUNTIME_FIELDS
    assert C.TrainConfig(threads=2).threads == 2
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        C.TrainConfig(threads=0)


def _readme_smoke_paragraph() -> str:
    """The README paragraph that begins "`--preset smoke` is", joined into one line."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("`--preset smoke` is")
    return " ".join(text[start : text.index("\n\n", start)].split())


def test_the_readme_states_the_smoke_preset_as_it_is():
    """The README's smoke paragraph names each model's width, images, batch, epochs and
    steps, and NormProp's learning rate, as the preset sets them."""
    text = _readme_smoke_paragraph()
    for model, name in (("cifar10_nv", "cifar10-nv"), ("resnet50", "ResNet-50")):
        c = C.preset_config(model, "bn", "smoke")
        steps = c.subset[0] // c.batch_size * c.epochs
        stated = (f"{name} at width {c.width} on {c.subset[0]}/{c.subset[1]} Fashion-MNIST "
                  f"images, batch {c.batch_size}, {c.epochs} epochs ({steps} steps)")  # fmt: skip
        assert stated in text, stated
    assert f"NormProp at lr {C.preset_config('cifar10_nv', 'np', 'smoke').lr}" in text
