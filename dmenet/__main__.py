"""``python -m dmenet`` is the ``dmenet`` command."""

import sys

from dmenet.cli import main

if __name__ == "__main__":
    sys.exit(main())
