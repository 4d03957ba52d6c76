"""``python -m curation VERB ...``: see ``python -m curation --help``."""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main())
