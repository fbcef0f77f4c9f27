#!/usr/bin/env python
"""Make sure Fashion-MNIST is available, the way a fresh machine can get it.

1. Already found (``--data-dir``, ``$NORMSTAB_DATA``, the user cache or
   ``/usr/share/datasets/fashion-mnist``): nothing to do.
2. Debian/Ubuntu as root: ``apt-get install dataset-fashion-mnist``.
3. Otherwise: torchvision's downloader into the user cache.

    python analyses/get_data.py            # exit code 0 when the data is there
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from stability.experiments.cli import OneLineParser


def found(data_dir: str | None) -> bool:
    from stability.paper import data  # torch: not for --help

    try:
        data.load_arrays("fashion-mnist", "test", data_dir, subset=1)
        data.load_arrays("fashion-mnist", "train", data_dir, subset=1)
    except FileNotFoundError:
        return False
    return True


def install_with_apt() -> bool:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    print("installing Debian's dataset-fashion-mnist ...", flush=True)
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
    ):
        if subprocess.run(command, check=False).returncode != 0:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="also look here, and download here")
    args = parser.parse_args(argv)
    if found(args.data_dir):
        print("Fashion-MNIST: found")
        return 0
    if install_with_apt() and found(args.data_dir):
        print("Fashion-MNIST: installed from Debian's dataset-fashion-mnist")
        return 0
    print("Fashion-MNIST: downloading with torchvision ...", flush=True)
    from stability.paper import data

    try:
        for split in ("train", "test"):
            data.load_arrays("fashion-mnist", split, args.data_dir, download=True, subset=1)
    except Exception as error:  # noqa: BLE001 - any download failure ends in one message
        print(f"error: could not obtain Fashion-MNIST: {error}", file=sys.stderr)
        return 1
    print("Fashion-MNIST: downloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
