r"""What defines a training run: :class:`TrainConfig` and the paper's presets.

:func:`preset_config` encodes the paper's hyper-parameters per model and normalization
(section 4.1 and footnote 3 for cifar10-nv, section 4.2 and footnote 4 for ResNet-50) and
a few-minute CPU version of them (``smoke``). A config is frozen; ``config.json`` of a run
holds :meth:`TrainConfig.to_dict`. A resumed run continues its stored config, where only
:data:`RUNTIME_FIELDS` (where and how it runs, not what it computes) may change
(:func:`resumed_config`).

Importing this module loads no torch, so command-line parsers can use it; the data set
name is checked by :func:`stability.paper.data.canonical_name` when a config is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from stability.paper.names import NORM_KINDS

__all__ = [
    "AMP_MODES",
    "MINI_SEEDS",
    "MODELS",
    "PRESETS",
    "RUNTIME_FIELDS",
    "SCHEDULES",
    "TrainConfig",
    "preset_config",
    "resumed_config",
    "run_name",
]

MODELS: tuple[str, ...] = ("cifar10_nv", "resnet50")
SCHEDULES: tuple[str, ...] = ("linear", "poly")
AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
PRESETS: tuple[str, ...] = ("paper", "mini", "smoke")

#: What ``--on-warning`` may ask of the live divergence monitor (:mod:`.watch`).
WARNING_ACTIONS: tuple[str, ...] = ("log", "checkpoint", "stop", "lower-lr", "none")

#: Fields that may differ when a run is resumed: where and how it runs, not what it
#: computes (``compile`` can change rounding, not the maths).
RUNTIME_FIELDS: frozenset[str] = frozenset(
    {
        "device",
        "threads",
        "num_workers",
        "compile",
        "check_every",
        "on_warning",
        "out",
        "data_dir",
        "download",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    r"""Everything that defines one training run (written to ``config.json``).

    Attributes:
        model: ``cifar10_nv`` or ``resnet50``.
        norm: one of :data:`stability.paper.names.NORM_KINDS`.
        dataset: one of :data:`stability.paper.data.DATASETS`.
        data_dir: searched first for the data (see :mod:`stability.paper.data`).
        download: let torchvision download Fashion-MNIST / CIFAR-10 if missing.
        image_size: input side (None: the data set's default, 28 or 224).
        subset: ``(n_train, n_test)`` first samples kept (an int sets both); None: all.
        width: channel multiplier of the model (1: the paper's network; see
            :func:`stability.paper.models.cifar10_nv` and :func:`~stability.paper.models.resnet50`).
        epochs: training epochs.
        batch_size: global mini-batch (split evenly over DDP processes).
        lr: initial learning rate :math:`\eta_0`.
        schedule: ``linear`` or ``poly`` (see :mod:`stability.paper.train.schedules`).
        power: exponent :math:`p` of ``poly``.
        final_lr: :math:`\eta_T`, the learning rate after the last step.
        wd: weight decay (L2, SGD's ``weight_decay``, on every parameter as in Caffe).
        momentum: SGD momentum.
        seed: seeds model init, data order and augmentation.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...
        threads: torch intra-op CPU threads (None: torch's choice, one per core).
        amp: ``none``, ``bf16`` or ``fp16`` (with a GradScaler).
        compile: wrap the model in :func:`torch.compile`.
        channels_last: channels_last memory format; None: on CUDA only.
        deterministic: deterministic algorithms, no cuDNN autotuning.
        num_workers: loader worker processes (None: :func:`stability.paper.data.make_loader`'s).
        record: attach the Recorder.
        record_every: forward/gradient metrics every this many steps.
        weight_every: weight metrics (norm, coherence) every this many steps.
        include: glob(s) of layer names to record (None: every conv/linear layer).
        exclude: glob(s) of layer names not to record.
        check_every: read the loss sums/non-finite flag every this many steps.
        on_warning: what the live divergence monitor does when it warns (needs ``record``):
            one of :data:`WARNING_ACTIONS` (``log`` prints the warning; ``checkpoint`` also
            saves a checkpoint; ``stop`` also stops cleanly, resumable; ``lower-lr`` also
            multiplies the learning rate by 0.1 from the next step on), or ``none`` (no
            monitor). A resumed run may change it.
        out: the run directory.
        preset: the preset the config came from (informational).
    """

    model: str = "cifar10_nv"
    norm: str = "bn"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    subset: tuple[int, int] | None = None
    width: float = 1.0
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01
    schedule: str = "linear"
    power: float = 2.0
    final_lr: float = 1e-5
    wd: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: str = "none"
    compile: bool = False
    channels_last: bool | None = None
    deterministic: bool = False
    num_workers: int | None = None
    record: bool = True
    record_every: int = 1
    weight_every: int = 100
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    check_every: int = 10
    on_warning: str = "log"
    out: str = "runs/run"
    preset: str | None = None

    def __post_init__(self) -> None:
        from stability.paper.data import canonical_name  # only now: parsers import this module

        set_ = partial(object.__setattr__, self)
        _choice("model", self.model, MODELS)
        _choice("normalization kind", self.norm, NORM_KINDS)
        set_("dataset", canonical_name(self.dataset))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp mode", self.amp, AMP_MODES)
        if self.preset is not None:
            _choice("preset", self.preset, PRESETS)
        _choice("on-warning action", self.on_warning, WARNING_ACTIONS)
        for name in ("epochs", "batch_size", "record_every", "weight_every", "check_every"):
            _positive_int(name, getattr(self, name))
        for name in ("image_size", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.num_workers is not None and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.final_lr) and 0 <= self.final_lr <= self.lr):
            raise ValueError(f"final_lr must be in [0, lr={self.lr}], got {self.final_lr!r}")
        if not (math.isfinite(self.power) and self.power > 0):
            raise ValueError(f"power must be a positive number, got {self.power!r}")
        number = isinstance(self.width, int | float) and not isinstance(self.width, bool)
        if not (number and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a positive number, got {self.width!r}")
        if not (math.isfinite(self.wd) and self.wd >= 0):
            raise ValueError(f"wd must be >= 0, got {self.wd!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.model == "cifar10_nv" and self.image_size not in (None, 28):
            raise ValueError(f"cifar10_nv takes 28x28 inputs (Table 2), not {self.image_size}")
        set_("subset", _subset_pair(self.subset))
        set_("include", _globs(self.include))
        set_("exclude", _globs(self.exclude))
        if self.data_dir is not None:
            set_("data_dir", str(self.data_dir))
        set_("out", str(self.out))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (e.g. ``meta``) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        for key in ("subset", "include", "exclude"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def differences(
        self, other: TrainConfig, ignore: frozenset[str] = RUNTIME_FIELDS
    ) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for fields that differ, except ``ignore``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        }


def _choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _subset_pair(subset: Any) -> tuple[int, int] | None:
    if subset is None:
        return None
    pair = (subset, subset) if isinstance(subset, int) else tuple(subset)
    if len(pair) != 2:
        raise ValueError(f"subset must be an int or a pair (n_train, n_test), got {subset!r}")
    for n in pair:
        _positive_int("subset", n)
    return (int(pair[0]), int(pair[1]))


def _globs(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def resumed_config(
    stored: TrainConfig, given: TrainConfig, where: str, name: Callable[[str], str] = str
) -> TrainConfig:
    """The config a resumed run continues with: ``stored``, with ``given``'s runtime fields.

    Args:
        stored: the run's config.json.
        given: the config asked for now.
        where: the run directory, for the message.
        name: how a field is named in the message (e.g. as a command-line flag).

    Raises:
        ValueError: naming every field outside :data:`RUNTIME_FIELDS` that differs.
    """
    changed = stored.differences(given)
    if changed:
        shown = ", ".join(f"{name(k)} (stored {a!r}, given {b!r})" for k, (a, b) in changed.items())
        raise ValueError(f"--resume continues the stored config of {where}; cannot change {shown}")
    return replace(stored, **{k: getattr(given, k) for k in RUNTIME_FIELDS})


def run_name(model: str, norm: str, preset: str, seed: int = 0) -> str:
    """The conventional run directory name, ``<model>-<norm>-<preset>`` for seed 0 and
    ``<model>-<norm>-<preset>-seed<seed>`` for the others."""
    return f"{model}-{norm}-{preset}" + (f"-seed{seed}" if seed else "")


# --------------------------------------------------------------------------- presets

# cifar10-nv, section 4.1 and footnote 3: schedule, final lr and weight decay per norm.
_CIFAR_PER_NORM: dict[str, dict[str, Any]] = {
    "np": {"schedule": "poly", "power": 2.0, "final_lr": 1e-5, "wd": 1e-3},
    "trelu": {"schedule": "poly", "power": 2.0, "final_lr": 1e-5, "wd": 1e-3},
    "wn": {"schedule": "linear", "final_lr": 1e-4, "wd": 0.0},
    "bn": {"schedule": "linear", "final_lr": 1e-5, "wd": 2e-3},
    "none": {"schedule": "linear", "final_lr": 1e-5, "wd": 0.0},
}
_CIFAR_PAPER = {"dataset": "cifar10", "epochs": 256, "batch_size": 128, "lr": 0.01}
# ResNet-50, section 4.2 and footnote 4 (the same for every norm).
_RESNET_PAPER = {
    "dataset": "imagenet",
    "epochs": 120,
    "batch_size": 256,
    "lr": 0.1,
    "schedule": "poly",
    "power": 2.0,
    "final_lr": 0.0,
    "wd": 1e-4,
}
# Smoke runs: Fashion-MNIST subsets, about half a minute per run on one CPU core, enough to
# show the pipeline trains for every norm. Small batches, so that there are at least
# SMOKE_MIN_STEPS optimizer steps: BatchNorm's running statistics (momentum 0.1) keep
# 0.9^steps of their initial value, and the batch variance of these networks at Xavier
# init is ~0.002; after 18 steps (the earlier batch 64, 3 epochs) the running variance was
# still ~0.15, so evaluation (which uses it) squashed every activation and predicted one
# class (test top-1 below chance) while the training loss fell. After 96 steps
# 0.9^96 = 4e-5 is negligible. The networks are narrowed with ``width`` 0.25 (cost ~
# width**2, 16x cheaper per image), which pays for 4x the steps of the earlier width-1
# smoke preset (96 steps on 384 images): at width 1 and 96 steps WN's loss barely moved
# (2.302 -> 2.291, 16% test top-1). cifar10-nv: 2048 images, 3 epochs, 384 steps;
# ResNet-50 (bottleneck width 16): 1024 images, 3 epochs, 192 steps, its learning rate the
# paper's scaled linearly with the batch (0.1 * 16 / 256).
SMOKE_MIN_STEPS = 96


def _cpu_scale(
    subsets: dict[str, tuple[int, int]], epochs: dict[str, int], batch: int, weight_every: int
) -> dict[str, dict[str, Any]]:
    """A CPU-scale preset: Fashion-MNIST ``subsets`` and ``epochs`` per model, width 0.25,
    ``batch``, weight metrics every ``weight_every`` steps; ResNet-50 at 28 x 28 with the
    paper's learning rate scaled linearly with the batch (``0.1 * batch / 256``)."""
    common = {"dataset": "fashion-mnist", "width": 0.25, "batch_size": batch,
              "weight_every": weight_every}  # fmt: skip
    return {
        "cifar10_nv": common | {"subset": subsets["cifar10_nv"], "epochs": epochs["cifar10_nv"]},
        "resnet50": common | {"subset": subsets["resnet50"], "epochs": epochs["resnet50"],
                              "image_size": 28, "lr": _RESNET_PAPER["lr"] * batch / 256},
    }  # fmt: skip


_SMOKE = _cpu_scale(
    subsets={"cifar10_nv": (2048, 512), "resnet50": (1024, 512)},
    epochs={"cifar10_nv": 3, "resnet50": 3},
    batch=16,
    weight_every=8,
)
# Smoke learning rates per norm (cifar10-nv): NormProp at the paper's 0.01 diverged at step
# 6 of the smoke run (non-finite conv4 output) and at 0.003 its loss stuck at ln 10 from the
# first epoch; at 0.001 it trains (train loss 1.52 -> 0.73 in 3 epochs, measured 2026-12-03).
_SMOKE_CIFAR_LR: dict[str, float] = {"np": 1e-3}


# Mini runs: the paper's per-norm optimizer settings at a scale where the whole set of
# Figures 2-4 (5 + 2 norms, MINI_SEEDS each) trains in about an hour on a 2-core CPU.
# Fashion-MNIST subsets, batch 128 (the paper's cifar10-nv batch), networks narrowed with
# ``width`` (cost ~ width**2), 800 optimizer steps per run so the schedules decay over a
# real training run. ResNet-50 keeps its 50 layers, strides and block outputs; its
# bottleneck width is 16 instead of 64, and its learning rate is the paper's scaled
# linearly with the batch (0.1 * 128 / 256). Its training set is smaller (5120 images,
# 20 epochs) so that the train / test gap of Figure 3 has room to appear.
MINI_SEEDS: tuple[int, ...] = (0, 1)
_MINI = _cpu_scale(
    subsets={"cifar10_nv": (10240, 2000), "resnet50": (5120, 2000)},
    epochs={"cifar10_nv": 10, "resnet50": 20},
    batch=128,
    weight_every=20,
)
_SCALED = {"smoke": _SMOKE, "mini": _MINI}


def preset_config(model: str, norm: str, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The paper's hyper-parameters for ``model`` and ``norm`` (or the smoke version).

    ``paper``:

    * cifar10-nv (section 4.1, footnote 3): CIFAR-10, SGD momentum 0.9, 256 epochs,
      batch 128, lr 0.01; NP and TReLU: poly decay, power 2, to 1e-5, wd 1e-3; WN:
      linear to 1e-4, no wd; BN: linear to 1e-5, wd 2e-3; none: linear to 1e-5, no wd.
    * ResNet-50 (section 4.2, footnote 4): ImageNet, 120 epochs, batch 256 (global),
      lr 0.1, poly power 2 to 0, wd 1e-4, for every norm.

    ``mini``: the same per-norm optimizer settings at CPU scale (see :data:`_MINI`):
    Fashion-MNIST, batch 128, 800 steps; cifar10-nv at width 0.25 on 10240 / 2000 images
    for 10 epochs; ResNet-50 (28 x 28, bottleneck width 16) on 5120 / 2000 images for 20
    epochs with lr 0.05; weight metrics every 20 steps. Seeds :data:`MINI_SEEDS`.

    ``smoke``: the same optimizer settings on Fashion-MNIST subsets, so a run takes about
    half a minute on a CPU core (see :data:`_SMOKE`): networks at width 0.25, batch 16,
    3 epochs; cifar10-nv on 2048 / 512 images (384 steps), ResNet-50 at 28 x 28 on 1024 /
    512 images (192 steps) with lr 0.00625 = 0.1 * 16/256; at least
    :data:`SMOKE_MIN_STEPS` steps, enough for BatchNorm's running statistics to forget
    their initial value. cifar10-nv's NormProp trains at lr 0.001 instead of 0.01, at which
    its smoke run diverged (:data:`_SMOKE_CIFAR_LR`). Weight metrics every 8 steps so the
    coherence curves have points.

    All use Xavier initialization (built into the model factories), seed 0 and
    ``out = runs/<model>-<norm>-<preset>`` (:func:`run_name`; with a ``seed`` override,
    the seed's name). ``overrides`` replace any field.

    Raises:
        ValueError: unknown model, norm or preset, or a bad override.
    """
    _choice("model", model, MODELS)
    _choice("normalization kind", norm, NORM_KINDS)
    _choice("preset", preset, PRESETS)
    values: dict[str, Any] = {"model": model, "norm": norm, "momentum": 0.9, "preset": preset}
    if model == "cifar10_nv":
        values |= _CIFAR_PAPER | _CIFAR_PER_NORM[norm]
    else:
        values |= _RESNET_PAPER
    values |= _SCALED.get(preset, {}).get(model, {})
    if preset == "smoke" and model == "cifar10_nv" and norm in _SMOKE_CIFAR_LR:
        values["lr"] = _SMOKE_CIFAR_LR[norm]
    values["out"] = str(Path("runs") / run_name(model, norm, preset, overrides.get("seed", 0)))
    values |= overrides
    return TrainConfig(**values)
