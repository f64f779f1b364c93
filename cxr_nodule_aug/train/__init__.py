"""Training code and the command-line interface.

Nothing in :mod:`cxr_nodule_aug` outside this package imports from it: the library
(transforms, models, functional ops, hub I/O) stands alone.
"""
