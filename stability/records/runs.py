"""The run directory of one training run: config, history, records, checkpoints.

Layout of ``runs/<name>/`` (written by :func:`stability.paper.train.train`)::

    config.json            the full TrainConfig (flat) plus a "meta" entry (world size,
                           steps per epoch, torch version, command line, data set info)
    history.csv            one row per finished epoch (HISTORY_COLUMNS), appended row by
                           row with flush + fsync
    records.parquet/       the Recorder's table as a parquet *directory dataset*:
        part-00000.parquet     one part per epoch (plus one per interruption), each
        part-00001.parquet     written to a hidden temp file and renamed into place;
        ...                    with DDP: part-00000-rank0.parquet, part-00000-rank1..., and
                               a ``rank`` column
    checkpoint.pt          the latest checkpoint (atomic: temp file + fsync + os.replace)
    checkpoint.prev.pt     the one before it, the fallback when the latest is unreadable
    status.json            {"state": running|stopped|finished|diverged, "epoch", "step", ...}
    divergence.json        only when the loss went non-finite (stability.paper.train.loop)
    stale/<timestamp>/     history or record parts set aside on resume (never deleted)

``pd.read_parquet(run / "records.parquet")`` reads every part as one table (pyarrow
ignores the hidden ``.tmp`` files and the ``stale`` folder is outside the dataset).
Because a part only appears by ``os.replace`` of a complete file, a run killed at any
moment (even SIGKILL) leaves a readable prefix of its records.

The checkpoint files, and how history and parts are made to agree with a checkpoint on
resume, belong to training: :mod:`stability.paper.train.checkpoint`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "DIVERGENCE",
    "HISTORY",
    "HISTORY_COLUMNS",
    "PREVIOUS_CHECKPOINT",
    "RECORDS",
    "STATUS",
    "RunDir",
    "RunExistsError",
    "check_run_dir",
    "jsonable",
    "new_output_dir",
    "open_run",
    "read_json",
    "replace_atomically",
    "tmp_name",
    "write_json_atomic",
]

CONFIG = "config.json"
HISTORY = "history.csv"
RECORDS = "records.parquet"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
STATUS = "status.json"
DIVERGENCE = "divergence.json"
STALE = "stale"

#: Columns of history.csv. Losses are mean cross-entropy, top-k accuracies in percent,
#: ``lr`` the learning rate of the epoch's last step, ``step`` the optimizer steps done at
#: the end of the epoch, ``seconds`` the cumulative wall-clock time of training and
#: evaluation since the run began (summed over resumes), ``amp_scale`` the fp16 loss
#: scale at the end of the epoch (1 without a GradScaler).
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "step", "lr", "train_loss", "train_top1", "train_top5", "test_loss", "test_top1",
    "test_top5", "seconds", "amp_scale",
)  # fmt: skip

_PART = re.compile(r"^part-(\d{5,})(?:-rank(\d+))?\.parquet$")


class RunExistsError(FileExistsError):
    """The run directory already holds a run and neither resume nor force was asked."""


# --------------------------------------------------------------------------- small io


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tmp_name(path: Path) -> Path:
    """A hidden sibling temp path (ignored by pyarrow's dataset discovery)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_atomically(tmp: Path, path: Path) -> None:
    """Rename the complete file ``tmp`` to ``path`` (``os.replace``) and fsync the folder."""
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def jsonable(value: Any) -> Any:
    """``value`` with JSON types only: the project's one JSON policy.

    Mappings and sequences are converted item by item, numpy scalars become Python
    scalars, paths strings, and non-finite floats (NaN, +-inf) ``null``: strict JSON that
    every reader accepts (:func:`read_json` gives them back as None).
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | os.PathLike, obj: Mapping[str, Any]) -> Path:
    """Write ``obj`` as strict JSON (:func:`jsonable`) via a temp file and ``os.replace``."""
    path = Path(path)
    tmp = tmp_name(path)
    with open(tmp, "w") as f:
        json.dump(jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    replace_atomically(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object."""
    with open(path) as f:
        return json.load(f)


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-%f")


# --------------------------------------------------------------------------- the run dir


class RunDir:
    """Files of one run directory; see the module docstring for the layout.

    Args:
        path: the run directory (created by :func:`open_run`).
        rank: this process's rank; only rank 0 writes shared files (config, history,
            checkpoint, status), every rank writes its own record parts.
        world_size: number of processes; above 1 parts are named ``...-rank{r}.parquet``.

    Attributes ``config_path``, ``history_path``, ``records_path``, ``checkpoint_path`` and
    ``previous_checkpoint_path`` are the files of the layout.
    """

    def __init__(self, path: str | os.PathLike, rank: int = 0, world_size: int = 1) -> None:
        self.path = Path(path)
        self.rank = rank
        self.world_size = world_size
        self.config_path = self.path / CONFIG
        self.history_path = self.path / HISTORY
        self.records_path = self.path / RECORDS
        self.checkpoint_path = self.path / CHECKPOINT
        self.previous_checkpoint_path = self.path / PREVIOUS_CHECKPOINT

    def part_path(self, index: int, rank: int | None = None) -> Path:
        """``records.parquet/part-{index:05d}[-rank{r}].parquet``."""
        rank = self.rank if rank is None else rank
        suffix = f"-rank{rank}" if self.world_size > 1 else ""
        return self.records_path / f"part-{index:05d}{suffix}.parquet"

    # ---------------------------------------------------------------- config / status
    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write config.json atomically."""
        return write_json_atomic(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        """The stored config.json."""
        return read_json(self.config_path)

    def write_status(self, state: str, **fields: Any) -> Path:
        """status.json: ``{"state": state, "time": ..., **fields}``."""
        return write_json_atomic(
            self.path / STATUS, {"state": state, "time": datetime.now().isoformat(), **fields}
        )

    def read_status(self) -> dict[str, Any] | None:
        """status.json, or None if absent."""
        path = self.path / STATUS
        return read_json(path) if path.is_file() else None

    # ---------------------------------------------------------------- history
    def append_history(self, row: Mapping[str, Any]) -> None:
        """Append one row to history.csv (header first if the file is new); flush + fsync."""
        new = not self.history_path.exists() or self.history_path.stat().st_size == 0
        with open(self.history_path, "a", newline="") as f:
            _write_rows(f, [row], header=new)

    def read_history(self) -> pd.DataFrame:
        """history.csv as a DataFrame (empty, with the columns, if absent)."""
        import pandas as pd  # not at import time: command-line parsers use this module

        if not self.history_path.exists() or self.history_path.stat().st_size == 0:
            return pd.DataFrame(columns=list(HISTORY_COLUMNS))
        return pd.read_csv(self.history_path)

    def count_history_rows(self) -> int:
        """Data rows in history.csv (0 if absent), without parsing them."""
        if not self.history_path.exists():
            return 0
        with open(self.history_path, newline="") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)

    def rewrite_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace history.csv by ``rows``, atomically."""
        tmp = tmp_name(self.history_path)
        with open(tmp, "w", newline="") as f:
            _write_rows(f, rows, header=True)
        replace_atomically(tmp, self.history_path)

    # ---------------------------------------------------------------- records
    def write_part(self, frame: pd.DataFrame, index: int) -> Path | None:
        """Write ``frame`` as part ``index`` of records.parquet (this rank), atomically.

        With ``world_size > 1`` a ``rank`` column is inserted after ``step``. An empty
        frame writes nothing and returns None.
        """
        if len(frame) == 0:
            return None
        if self.world_size > 1 and "rank" not in frame.columns:
            frame = frame.copy()
            frame.insert(1, "rank", self.rank)
        path = self.part_path(index)
        if path.exists():
            raise FileExistsError(f"{path} exists; record parts are never overwritten")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_name(path)
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        replace_atomically(tmp, path)
        return path

    def parts(self, rank: int | None = None) -> list[tuple[int, Path]]:
        """``(index, path)`` of this rank's parts (every rank's with ``rank=-1``), sorted."""
        if not self.records_path.is_dir():
            return []
        found = []
        for path in self.records_path.iterdir():
            match = _PART.match(path.name)
            if not match:
                continue
            part_rank = int(match.group(2)) if match.group(2) is not None else 0
            if rank == -1 or part_rank == (self.rank if rank is None else rank):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def read_records(self, **kwargs: Any) -> pd.DataFrame:
        """Every record part as one DataFrame (``pd.read_parquet`` on the directory)."""
        import pandas as pd

        return pd.read_parquet(self.records_path, **kwargs)

    # ---------------------------------------------------------------- stale files
    def set_aside(self, paths: Iterable[Path], why: str) -> list[Path]:
        """Move ``paths`` into ``stale/<timestamp>/`` (never deleting them); warn once."""
        paths = [p for p in paths if p.exists()]
        if not paths:
            return []
        target = self.path / STALE / _stamp()
        target.mkdir(parents=True, exist_ok=True)
        moved = [Path(shutil.move(str(p), target / p.name)) for p in paths]
        warnings.warn(f"{why}: moved {', '.join(p.name for p in paths)} to {target}", stacklevel=2)
        return moved


def _write_rows(f: Any, rows: Iterable[Mapping[str, Any]], header: bool) -> None:
    """Write history rows (floats as ``repr``: they round-trip exactly); flush + fsync."""
    writer = csv.DictWriter(f, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: repr(v) if isinstance(v := row.get(k), float) else v for k in HISTORY_COLUMNS}
        )
    f.flush()
    os.fsync(f.fileno())


# --------------------------------------------------------------------------- opening


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_writable_parent(path: Path, flag: str) -> None:
    """A one-line error when some parent of ``path`` is a file (mkdir would raise deep inside)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{flag} {path}: {parent} is a file, not a folder")
            return


def new_output_dir(
    out: str | os.PathLike | None, default_parent: str, *, flag: str = "--out"
) -> Path:
    """Create the output folder of an experiment: new, or existing and empty.

    ``out`` None means ``<default_parent>/<timestamp>``. An existing folder that holds
    anything, or a path that is a file or lies under one, is refused with a one-line error
    naming ``flag``: nothing a user saved is ever overwritten.

    Raises:
        FileExistsError: ``out`` holds files or is a file.
        NotADirectoryError: a parent of ``out`` is a file.
    """
    path = Path(out) if out is not None else Path(default_parent) / _stamp()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{flag} {path} is a file; choose a new folder")
    if path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"{flag} {path} already holds files; choose a new folder")
    _check_writable_parent(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_run_dir(path: str | os.PathLike, *, resume: bool = False, force: bool = False) -> None:
    """Raise if a run cannot start (or resume) in ``path``; touches nothing.

    Raises:
        RunExistsError: the path exists and is not empty, without resume or force; it is
            a file; or ``force`` was asked for a folder that is not a run directory.
        NotADirectoryError: a parent of the path is a file.
        FileNotFoundError: ``resume`` of a path holding no run (no config.json).
        ValueError: both ``resume`` and ``force``.
    """
    if resume and force:
        raise ValueError("--resume continues a run and --force starts a new one; choose one")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunExistsError(f"--out {path} is a file, not a run directory; choose a new folder")
    _check_writable_parent(path, "--out")
    if force and path.is_dir() and not _is_empty_dir(path) and not (path / CONFIG).is_file():
        raise RunExistsError(
            f"--force sets aside only a run directory; {path} holds files but no {CONFIG}"
        )
    if resume:
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"--resume: {path} holds no run (no {CONFIG})")
    elif path.exists() and not _is_empty_dir(path) and not force:
        if not (path / CONFIG).is_file():
            raise RunExistsError(f"--out {path} holds files but no {CONFIG}; choose a new folder")
        raise RunExistsError(
            f"{path} already holds a run; pass --resume to continue it or --force to "
            "start a new one (the old one is then renamed, not deleted)"
        )


def open_run(
    path: str | os.PathLike,
    config: Mapping[str, Any] | None,
    *,
    resume: bool = False,
    force: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> RunDir:
    """Create (or reopen, with ``resume``) a run directory.

    * new path, or an existing empty directory: created, ``config`` written (rank 0);
    * existing run, ``resume``: reopened as is (the caller compares configs);
    * existing run, ``force``: the old directory is *renamed* to
      ``<path>.old-<timestamp>`` (never deleted) and a new one created;
    * existing run otherwise: :class:`RunExistsError` (:func:`check_run_dir` makes the
      same checks without touching anything, e.g. before slow set-up work).

    Only rank 0 touches the file system here; other ranks just wrap the path (call after
    a barrier).
    """
    path = Path(path)
    run = RunDir(path, rank, world_size)
    if rank != 0:
        return run
    check_run_dir(path, resume=resume, force=force)
    if resume:
        return run
    if path.exists() and not _is_empty_dir(path):
        aside = path.with_name(f"{path.name}.old-{_stamp()}")
        os.replace(path, aside)
        warnings.warn(f"--force: moved the existing run {path} to {aside}", stacklevel=2)
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        run.write_config(config)
    return run
