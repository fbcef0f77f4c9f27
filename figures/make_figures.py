#!/usr/bin/env python
"""The paper's Figures 2, 3 and 4 from saved runs.

The work is done by :mod:`stability.experiments.paper_figures`;
run with ``--help`` for the options.
"""

import sys

from stability.experiments.paper_figures import main

if __name__ == "__main__":
    sys.exit(main())
