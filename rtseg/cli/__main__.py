"""``python -m rtseg.cli`` (e.g. ``torchrun --nproc_per_node=4 -m rtseg.cli train ...``)."""

import sys

from rtseg.cli import main

sys.exit(main())
