"""``python -m cxr_nodule_aug.cli`` (and ``torchrun --nproc-per-node N -m cxr_nodule_aug.cli train ...``)."""

import sys

from cxr_nodule_aug.cli import main

sys.exit(main())
