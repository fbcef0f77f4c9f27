#!/usr/bin/env python
"""Recorder overhead benchmark.

The work is done by :mod:`stability.experiments.bench_recorder`;
run with ``--help`` for the options.
"""

import sys

from stability.experiments.bench_recorder import main

if __name__ == "__main__":
    sys.exit(main())
