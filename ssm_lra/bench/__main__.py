import sys

from ssm_lra.bench.cli import main

sys.exit(main())
