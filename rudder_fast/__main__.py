"""``python -m rudder_fast``: the ``rudder-fast`` toolbox, for hosts where its script is not on PATH."""

import sys

from .cli import main

sys.exit(main())
