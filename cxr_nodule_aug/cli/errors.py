"""How every ``cxr-nodule-aug`` command fails: one line on stderr and an exit status.

* exit 2, a **usage error**: argparse's own errors (unknown option, missing or malformed
  value) and values a command finds invalid before it starts any work (:class:`UsageError`,
  raised by the argument types of :mod:`cxr_nodule_aug.cli.arguments` or by ``run``);
* exit 1, a **runtime failure**: :class:`CommandError`, and any exception a command lets
  through (a corrupt file, a model that does not load, no room for a nodule);
* exit 130 on Ctrl-C.

The line reads ``cxr-nodule-aug COMMAND: error: MESSAGE``. No traceback is printed unless
the global ``--debug`` flag is given, which re-raises the exception instead. This is the one
place that turns exceptions into exit codes: commands raise, :func:`report` reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
    if isinstance(err, CommandError):
        return err.exit_code
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
