"""Where an experiment writes: its output folder and the ``config.json`` beside its results.

Every experiment writes ``config.json`` = ``{"experiment": NAME, "config": <its frozen
config>, ...what it measured about the setting}`` (strict JSON through
:func:`stability.records.runs.write_json_atomic`). A ``config.json`` that some other tool
wrote (a training run's, another experiment's) is never replaced.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from stability.records.runs import CONFIG, new_output_dir, read_json, write_json_atomic


def output_folder(out: str | os.PathLike) -> Path:
    """``out`` if it is a folder, else a new folder made by :func:`new_output_dir`.

    For experiments that regenerate their files in place (figures, growth reports).

    Raises:
        FileExistsError: ``out`` is a file.
        NotADirectoryError: a parent of ``out`` is a file.
    """
    out = Path(out)
    return out if out.is_dir() else new_output_dir(out, str(out.parent))


def check_config(out: str | os.PathLike, experiment: str) -> None:
    """Raise if ``out/config.json`` exists and was not written by ``experiment``.

    Raises:
        FileExistsError: naming the file.
    """
    path = Path(out) / CONFIG
    if not path.exists():
        return
    try:
        previous = read_json(path).get("experiment")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        previous = None
    if previous != experiment:
        raise FileExistsError(
            f"{path} is not a {experiment} config (a run's?); choose another --out"
        )


def write_config(out: str | os.PathLike, experiment: str, config: Any, **extra: Any) -> Path:
    """Write ``out/config.json``: the experiment's name, its dataclass config and ``extra``.

    Raises:
        FileExistsError: ``out`` holds a config.json of something else.
    """
    check_config(out, experiment)
    content = {"experiment": experiment, "config": dataclasses.asdict(config), **extra}
    return write_json_atomic(Path(out) / CONFIG, content)
