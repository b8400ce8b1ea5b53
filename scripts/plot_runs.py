#!/usr/bin/env python
"""Learning curves of runs: the same as `python -m ssm_lra.plot_runs RUN... [--out DIR]`."""

import sys

from ssm_lra.plot_runs import main

if __name__ == "__main__":
    sys.exit(main())
