"""One module per ``cxr-nodule-aug`` subcommand.

Each module defines ``add_arguments(parser)`` and ``run(args) -> int``. The table in
:mod:`cxr_nodule_aug.train.cli` names them, so ``--help`` works without importing them.
"""
