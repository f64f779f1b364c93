"""The ``cxr-nodule-aug`` command (also ``python -m cxr_nodule_aug.cli``).

One module per subcommand in this package, each defining ``add_arguments(parser)`` and
``run(args) -> int``. :data:`COMMANDS` names them, and a module is imported only when its
subcommand runs (so ``--help`` stays fast and works without optional extras installed).
A command fails by raising; :func:`main` reports it as one line on stderr with the exit
status of :data:`~cxr_nodule_aug.cli.errors.EXIT_CODES` (2: usage, 1: runtime; the table is
printed by ``--help``), see :mod:`cxr_nodule_aug.cli.errors`.
Only the ``train`` command imports :mod:`cxr_nodule_aug.train`, and only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from cxr_nodule_aug import __version__
from cxr_nodule_aug.cli.errors import ArgumentParser, exit_code_table, report

# name -> (module, one-line help). Later work adds its subcommand here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cxr_nodule_aug.cli.demo", "insert nodules of several shapes at 3 diameters into a real radiograph and a SimCXR render; write figures and records"),
    "train": ("cxr_nodule_aug.cli.train", "train the shape, texture or lung model, or a nodule detector"),
    "hem": ("cxr_nodule_aug.cli.hem", "hard-example mining: the nodules a trained detector misses, as a HEMSampler file and a histogram"),
    "export": ("cxr_nodule_aug.cli.export", "turn a training run into a weights directory with a model card (and push it to the Hub)"),
    "info": ("cxr_nodule_aug.cli.info", "show the version, the device and where weights load from"),
    "sim": ("cxr_nodule_aug.cli.sim", "export simulated radiographs with 3-D nodules (SimCXR)"),
    "synthesize": ("cxr_nodule_aug.cli.synthesize", "write a pre-synthesized detection set (NODE21 layout, replayable records) from a dataset, for train detector synth=node21:DIR"),
    "masks": ("cxr_nodule_aug.cli.masks", "pseudo nodule masks from a box-only dataset (NODE21, VinDr, JSRT, ChestX-ray14), for train shape / train texture masks=OUT"),
    "lungs": ("cxr_nodule_aug.cli.lungs", "precompute the lung masks NoduleInpaint would compute online (NODE21, VinDr), for train detector lung_masks=DIR"),
    "eval": ("cxr_nodule_aug.cli.eval", "NODE21 detection metrics (AUC, FROC, score) from a prediction JSON"),
    "predict": ("cxr_nodule_aug.cli.predict", "run a trained detector on a dataset and write NODE21 prediction JSON (original-image pixels) for eval"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="cxr-nodule-aug",
        description="Insert realistic, controllable lung nodules into chest X-rays.",
        epilog="Errors are one line on stderr, 'cxr-nodule-aug COMMAND: error: ...'; --debug shows the traceback.\n\n" + exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, raise it with its traceback instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # Arguments are added lazily in main(): the subparser here only carries the help line.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (errors: see :mod:`cxr_nodule_aug.cli.errors`).

    ``--debug`` (anywhere before a lone ``--``) re-raises a command's exception with its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head
    if debug:
        argv.remove("--debug")
    name = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        if name is None:
            args = build_parser().parse_args(argv)  # help, --version, or an unknown command (a usage error)
            build_parser().print_help()
            return 0
        module = importlib.import_module(COMMANDS[name][0])
        sub_parser = ArgumentParser(prog=f"cxr-nodule-aug {name}", description=COMMANDS[name][1])
        module.add_arguments(sub_parser)
        args = sub_parser.parse_intermixed_args(argv[1:])
        return int(module.run(args) or 0)
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):  # --help, --version, or an explicit status
            raise
        if debug:
            raise
        return report(name, err)
    except BaseException as err:  # noqa: BLE001 - the one place errors become exit codes
        if debug:
            raise
        return report(name, err)
