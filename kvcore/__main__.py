"""``python -m kvcore``: the same command line as the ``kvcore`` console script."""

import sys

from kvcore._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
