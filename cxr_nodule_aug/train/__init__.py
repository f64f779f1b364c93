"""Training code (the trainers behind ``cxr-nodule-aug train``).

Nothing in :mod:`cxr_nodule_aug` outside this package imports from it, except the ``train``
command (:mod:`cxr_nodule_aug.cli.train`) when it runs: the library (transforms, models,
functional ops, hub I/O) stands alone.
"""
