"""Same as `python -m ssm_lra.tables ...`: the reproduction table from run directories."""

import sys

from ssm_lra.tables import main

if __name__ == "__main__":
    sys.exit(main())
