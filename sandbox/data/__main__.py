"""`python -m sandbox.data --profile tiny|gpu`: the same CLI as `python prepare.py`."""

import sys

from sandbox.data.build import main

sys.exit(main())
