"""``python -m mme``: the command line (see :mod:`mme.cli`)."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
