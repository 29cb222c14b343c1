"""``python -m oncotwin``: the same as the ``oncotwin`` command."""

import sys

from oncotwin.cli import main

sys.exit(main())
