#!/usr/bin/env python
"""Overhead of the TensorBoard and W&B sinks next to the Recorder's.

The work is done by :mod:`stability.integrations.bench`; run with ``--help`` for the options.
"""

import sys

from stability.integrations.bench import main

if __name__ == "__main__":
    sys.exit(main())
