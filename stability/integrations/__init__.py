"""Where users train: callbacks for training frameworks and sinks for dashboards.

Each integration is an optional extra; importing this package imports none of them.

==================================  ===================================  ======================
module                              what                                 extra
==================================  ===================================  ======================
:mod:`.lightning`                   ``RecorderCallback`` for Lightning   ``normstab[lightning]``
:mod:`.hf`                          ``RecorderCallback`` for HF Trainer  ``normstab[hf]``
:mod:`.tensorboard`                 ``TensorBoardSink``                  ``normstab[tensorboard]``
:mod:`.wandb`                       ``WandbSink``                        ``normstab[wandb]``
==================================  ===================================  ======================

:mod:`.session` holds what both callbacks share (one Recorder per fit, stepped once per
optimizer step, paused outside training); :mod:`.sinks` holds what both sinks share
(reading the Recorder's flushed rows); :mod:`.bench` measures the sinks' overhead next to
the Recorder's (``analyses/bench_sinks.py``).
"""


def missing_extra(extra: str, error: ImportError) -> ImportError:
    """The one-line error of an integration whose optional dependency is not installed."""
    return ImportError(
        f"stability.integrations.{extra} needs the '{extra}' extra "
        f"({error.name or error} is missing): pip install 'normstab[{extra}]'"
    )
