"""How every ``cxr-nodule-aug`` command ends: its exit status, and one line on stderr on failure.

:data:`EXIT_CODES` is the one table of exit statuses (``cxr-nodule-aug --help`` prints it, the
README repeats it, a test keeps them equal):

* 0: success;
* 1, a **runtime failure**: :class:`CommandError`, and any exception a command lets through
  (a corrupt file, a model that does not load, no room for a nodule);
* 2, a **usage error**: argparse's own errors (unknown option, missing or malformed value)
  and values a command finds invalid before it starts any work (:class:`UsageError`, raised
  by the argument types of :mod:`cxr_nodule_aug.cli.arguments` or by ``run``), including an
  output folder that holds another run's output (:class:`~cxr_nodule_aug.io.OutputConflict`);
* 3: partly done (``lungs``: some images have no lung mask, listed in ``failed.txt``);
* 130: interrupted (Ctrl-C).

The line reads ``cxr-nodule-aug COMMAND: error: MESSAGE``. No traceback is printed unless
the global ``--debug`` flag is given, which re-raises the exception instead. This is the one
place that turns exceptions into exit codes: commands raise, :func:`report` reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_RUNTIME: "the command failed while working (a corrupt file, a model that does not load, no room for a nodule)",
    EXIT_USAGE: "usage error, found before any work: an unknown option, a bad value (sim --size 0, --diameter-mm 30 4), a missing input, "
                "an --out that is a file, cannot be created or holds another run's output",
    EXIT_SOME_FAILED: "partly done: lungs or masks wrote every mask it could; failed.txt lists the images without one",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); rerun the same command to resume (sim, synthesize, lungs, train)",
}


def exit_code_table() -> str:
    """:data:`EXIT_CODES` as the lines ``cxr-nodule-aug --help`` ends with."""
    return "exit status:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


class CommandError(Exception):
    """A command cannot do its work (exit 1). The message names what failed and why."""

    exit_code = EXIT_RUNTIME


class UsageError(CommandError):
    """The command line asks for something invalid (exit 2). The message names the argument."""

    exit_code = EXIT_USAGE


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised as :class:`UsageError` (reported as one line by
    :func:`report`) instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def exit_code(err: BaseException) -> int:
    from cxr_nodule_aug.io.writers import OutputConflict

    if isinstance(err, CommandError):
        return err.exit_code
    if isinstance(err, OutputConflict):  # the command line named that folder
        return EXIT_USAGE
    if isinstance(err, (argparse.ArgumentError, argparse.ArgumentTypeError)):
        return EXIT_USAGE
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_RUNTIME


def message(err: BaseException) -> str:
    """The one line to print for ``err``."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (rerun the same command to resume where a command supports it)"
    if isinstance(err, SystemExit):  # raise SystemExit("message"): a command's own words
        return one_line(err.code)
    text = one_line(str(err))
    if isinstance(err, FileNotFoundError) and err.filename is not None and not text:
        text = f"no such file: {err.filename}"
    if isinstance(err, (CommandError, ValueError, OSError, RuntimeError, argparse.ArgumentError, argparse.ArgumentTypeError)) and text:
        return text
    # Anything else is a bug or an unexpected library failure: name its type.
    return f"{type(err).__name__}: {text or 'no message'} (rerun with --debug for the traceback)"


def report(command: str | None, err: BaseException, stream=None) -> int:
    """Print ``err`` as one line on ``stream`` (stderr) and return its exit status."""
    prog = "cxr-nodule-aug" + (f" {command}" if command else "")
    print(f"{prog}: error: {message(err)}", file=stream if stream is not None else sys.stderr)
    return exit_code(err)
