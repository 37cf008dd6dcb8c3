"""The one place that turns errors and signals into exit codes and one-line messages.

* :class:`~prunekit.core.errors.PrunekitError` is the user's mistake (a bad value, a refused
  output): ``prunekit CMD: error: <one line>``, exit code 2. So are the environment's refusals
  that no code can fix (disk full, permission denied, out of memory), said as such.
* Anything else is a bug in prunekit: one line saying so, exit code 1; ``--debug`` (anywhere on
  the command line) or ``PRUNEKIT_DEBUG=1`` prints the traceback too.
* Ctrl-C (SIGINT) exits 130 and SIGTERM (``timeout``, Slurm, ``docker stop``) exits 143, with one
  line. SIGTERM is raised in the main thread as :class:`Terminated`, a ``KeyboardInterrupt``, so
  every ``finally`` runs: the one writer (:mod:`prunekit.core.io`) removes its temporary folder
  and nothing is left behind.
* Argument errors (argparse) are one line too (:class:`OneLineParser`); they leave as
  ``SystemExit(2)``, as ``--help`` and ``--version`` leave with ``SystemExit(0)``.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from prunekit.core.errors import PrunekitError

EXIT_OK, EXIT_BUG, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
MAX_MESSAGE = 400  # characters of an error line
# errors of the machine, not of prunekit: said in one line, exit 2
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                      errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOMEM}
RESUMABLE = {"data score", "data train"}  # an interrupted run of these resumes when rerun


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prunekit CMD: error: <message> (see prunekit CMD --help)``."""

    def error(self, message: str):
        first = (message.strip().splitlines() or ["bad arguments"])[0]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_cut(first)} (see {self.prog} --help)\n")


def _cut(line: str) -> str:
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def one_line(err: BaseException) -> str:
    """The first line of an error's message (a KeyError's key without its quotes), cut short."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    return _cut((str(message).strip().splitlines() or [type(err).__name__])[0])


_RECEIVED: list[int] = []  # the signals that arrived during the current command


def _on_sigterm(signum, frame):
    _RECEIVED.append(signum)
    raise Terminated


def _on_sigint(signum, frame):
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def _interrupted(name: str, command: str, err: BaseException) -> int:
    if isinstance(err, Terminated) or signal.SIGTERM in _RECEIVED:
        _say(f"{name}: terminated (SIGTERM); nothing was written")
        return EXIT_TERMINATED
    hint = "; rerun the same command to resume" if command in RESUMABLE else "; nothing was written"
    _say(f"{name}: interrupted{hint}")
    return EXIT_INTERRUPTED


def run_command(command: str, body: Callable[[], int], debug: bool = False) -> int:
    """Run ``body`` (a command) and return its exit code, mapping every error and signal to a code
    and at most one line on stderr (plus the traceback of a bug with ``debug``)."""
    name = f"prunekit {command}".rstrip()
    previous = previous_int = None
    _RECEIVED.clear()
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous_int = signal.signal(signal.SIGINT, _on_sigint)
    try:
        return body()
    except BrokenPipeError:  # `prunekit list | head`: the reader left; nothing to report
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_OK
    except KeyboardInterrupt as err:  # Terminated (SIGTERM) too
        return _interrupted(name, command, err)
    except BaseException as err:
        if _RECEIVED and not isinstance(err, SystemExit):  # a signal that a library turned into another error
            return _interrupted(name, command, err)
        return _classify(name, err, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _classify(name: str, err: BaseException, debug: bool) -> int:
    """The exit code and line of an error that is not a signal (SystemExit goes on: argparse, --help)."""
    if isinstance(err, PrunekitError):
        _say(f"{name}: error: {one_line(err)}")
        return EXIT_USAGE
    if isinstance(err, MemoryError):
        _say(f"{name}: error: out of memory; lower the sizes of the run (--nsamples, --seqlen, --chunk-size, "
             "--batch-size) or use a machine with more memory")
        return EXIT_USAGE
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        where = f" {err.filename!r}" if getattr(err, "filename", None) else ""
        _say(f"{name}: error: cannot read or write{where}: {err.strerror or one_line(err)}")
        return EXIT_USAGE
    if isinstance(err, Exception):  # whatever else it is, it is ours to fix
        return _bug(name, err, debug)
    raise err


def leave_interrupted(code: int) -> None:
    """End the process now with ``code`` when it is 130 or 143 (the run's cleanup has already run).

    Python's own exit would not keep the code: a Ctrl-C that lands while a C extension runs Python
    code through ``PyRun_String`` (torch's import does, through pybind11) marks the interpreter as
    interrupted even though prunekit caught the ``KeyboardInterrupt``, and at exit it then kills itself
    with SIGINT (exit -2 instead of 130; about one try in five while torch imports). So stdout and
    stderr are flushed and the process leaves through ``os._exit``."""
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _bug(name: str, err: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
        _say(f"{name}: internal error (a bug in prunekit; please report it with the traceback above)")
    else:
        _say(f"{name}: internal error, a bug in prunekit: {type(err).__name__}: {one_line(err)} "
             "(rerun with --debug for the traceback, and please report it)")
    return EXIT_BUG


def _say(line: str) -> None:
    print(line, file=sys.stderr)
