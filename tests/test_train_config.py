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
    assert c.dataset == "fashion-mnist" and c.subset is not None and c.epochs <= 3
    assert (c.schedule, c.final_lr, c.wd, c.lr) == ("poly", 1e-5, 1e-3, 0.01)
    r = C.preset_config("resnet50", "wn", "smoke")
    assert r.image_size <= 28 and r.subset[0] <= 1024
    assert r.lr == pytest.approx(0.1 * r.batch_size / 256)
    assert C.preset_config("resnet50", "wn", "smoke", epochs=1).epochs == 1
    assert C.run_name("resnet50", "wn", "smoke") == "resnet50-wn-smoke"


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
