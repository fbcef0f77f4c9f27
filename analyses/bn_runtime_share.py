#!/usr/bin/env python
"""Time share per operator category, BN vs WN (the paper's Figure 1).

The work is done by :mod:`stability.experiments.bn_runtime_share`;
run with ``--help`` for the options.
"""

import sys

from stability.experiments.bn_runtime_share import main

if __name__ == "__main__":
    sys.exit(main())
