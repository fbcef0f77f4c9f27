"""Checkpoints and resume: what a checkpoint holds, how it is saved, and how a run resumes.

At the end of every epoch (and on SIGTERM or ``max_steps``) a checkpoint holds the model,
optimizer, scheduler and scaler states, every process's RNG states (torch, CUDA, numpy,
python), the position (:class:`Progress`: epoch, batch within the epoch, global step,
seconds, record parts written), the partial-epoch accuracy sums of every process, and the
history rows. It is written by rank 0 with :func:`save_checkpoint` (temp file + fsync +
``os.replace``, keeping the previous one as ``checkpoint.prev.pt``) and read back with
:func:`load_checkpoint`, which falls back to the previous one when the latest is missing
or unreadable.

Exact resume. Resuming inside an epoch re-seeds the epoch, skips the batches already done
(:meth:`stability.paper.train.setup.TrainData.batches`), *then* restores the RNG states
(:func:`set_rng_state`), so the rest of the epoch sees exactly the samples, augmentations
and random numbers of an uninterrupted run: on a deterministic device history and records
are identical.

Consistency on resume. The checkpoint is the source of truth: it holds every history row
written so far and the number of record parts written. At the end of an epoch the order
is *part -> checkpoint -> history row*. A crash between the part and the checkpoint
leaves a part the checkpoint does not know: on resume it is moved to ``stale/`` (the
epoch is re-run and writes it again). A crash between the checkpoint and the history row
leaves history.csv one row short: on resume the row is appended from the checkpoint. A
history with *more* rows than the checkpoint (possible only after falling back to
``checkpoint.prev.pt``) is copied to ``stale/`` and rewritten with the checkpoint's rows
(:func:`reconcile`). Nothing is ever deleted. A diverged run is not resumed.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from stability.paper.train.distributed import Dist, barrier, gather_objects
from stability.records.runs import CHECKPOINT, RunDir, replace_atomically, tmp_name

__all__ = [
    "CHECKPOINT_FORMAT",
    "Progress",
    "load",
    "load_checkpoint",
    "reconcile",
    "rng_state",
    "save",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1


@dataclass
class Progress:
    """Where the run is: ``batch`` batches of ``epoch`` (0-based) are done.

    Attributes:
        epoch: epochs completed.
        batch: batches of the current epoch completed.
        step: optimizer steps completed (global, over resumes).
        seconds: training and evaluation time before the current process started.
        parts: record parts written (per rank).
        history: the history rows so far.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    seconds: float = 0.0
    parts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``progress`` entry (the history is stored on its own)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy (legacy global) and python RNG states."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (after a ``weights_only`` load)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------- files


def save_checkpoint(run: RunDir, state: Mapping[str, Any]) -> None:
    """Save ``state`` with ``torch.save`` atomically, keeping the previous one.

    Order: write ``.checkpoint.pt.tmp-<pid>``, fsync, move ``checkpoint.pt`` to
    ``checkpoint.prev.pt``, rename the temp file to ``checkpoint.pt``. At every moment at
    least one complete checkpoint exists.
    """
    tmp = tmp_name(run.checkpoint_path)
    with open(tmp, "wb") as f:
        torch.save(dict(state), f)
        f.flush()
        os.fsync(f.fileno())
    if run.checkpoint_path.exists():
        os.replace(run.checkpoint_path, run.previous_checkpoint_path)
    replace_atomically(tmp, run.checkpoint_path)


def load_checkpoint(run: RunDir, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The latest readable checkpoint of ``run``, or None if there is none.

    A missing, truncated or corrupt ``checkpoint.pt`` falls back to ``checkpoint.prev.pt``
    with a warning. Loaded with ``weights_only=True`` (the state holds tensors, numbers,
    strings and containers only).

    Raises:
        RuntimeError: both checkpoints exist but neither can be read.
    """
    errors = []
    for path in (run.checkpoint_path, run.previous_checkpoint_path):
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle, ... come in many types
            errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
            continue
        if errors or path != run.checkpoint_path:
            why = "; ".join(errors) or f"{CHECKPOINT} is missing"
            warnings.warn(f"{why}; resuming from {path}", stacklevel=2)
        return state
    if errors:
        raise RuntimeError(f"no readable checkpoint in {run.path}: " + "; ".join(errors))
    return None


def save(run: RunDir, dist: Dist, shared: Mapping[str, Any], local: Mapping[str, Any]) -> None:
    """Write a checkpoint: ``shared`` (rank 0's) and every rank's ``local`` under ``ranks``.

    Every rank must call it (the local states are gathered); rank 0 writes.
    """
    state = {"format": CHECKPOINT_FORMAT, **shared, "ranks": gather_objects(dict(local), dist)}
    if dist.is_main:
        save_checkpoint(run, state)
    barrier(dist)


def load(run: RunDir, map_location: Any, world_size: int) -> dict[str, Any] | None:
    """:func:`load_checkpoint`, checked: our format, written by ``world_size`` processes.

    Raises:
        ValueError: an unknown checkpoint format or a different number of processes.
    """
    state = load_checkpoint(run, map_location)
    if state is None:
        return None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"unknown checkpoint format {state.get('format')!r}")
    if len(state["ranks"]) != world_size:
        raise ValueError(
            f"the checkpoint was written by {len(state['ranks'])} process(es); resume with "
            f"the same number (this job has {world_size})"
        )
    return state


def reconcile(run: RunDir, history: Sequence[Mapping[str, Any]], parts_written: int) -> None:
    """Make history.csv and records.parquet agree with a checkpoint (see the module docs).

    Args:
        run: the run directory (only rank 0 changes files).
        history: the history rows the checkpoint holds.
        parts_written: how many parts (per rank) the checkpoint knows of.
    """
    if run.rank != 0:
        return
    stale = [p for i, p in run.parts(rank=-1) if i >= parts_written]
    run.set_aside(stale, f"record parts written after the checkpoint ({run.path})")
    n_file = run.count_history_rows()
    if n_file > len(history):
        why = f"history.csv has {n_file} rows, the checkpoint {len(history)}"
        run.set_aside([run.history_path], why)
        run.rewrite_history(history)
    elif n_file < len(history):
        if n_file == 0:
            run.rewrite_history(history)
        else:
            for row in history[n_file:]:
                run.append_history(row)
