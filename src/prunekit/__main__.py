"""``python -m prunekit ...``: the ``prunekit`` command without its console script."""

import sys

from prunekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
