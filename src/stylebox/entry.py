"""The ``stylebox`` command's entry point, light enough to take Ctrl-C from the start.

Loading the CLI takes about a second (pydantic, the plugins' commands). A Ctrl-C then
printed a traceback of the imports and a SIGTERM ended ``batch`` with 143, where a moment
later both end it with one line and exit 130: this module stands guard meanwhile.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

#: Commands that a SIGTERM stops as a Ctrl-C does (exit 130, resumable): from their first
#: moment, not only once their own handler is in place (while a Ray batch connected and
#: placed its workers, a SIGTERM ended it with 143, or Ray's crash report and 1).
STOPPED_LIKE_CTRL_C = frozenset({"run", "batch", "train", "export"})

EXIT_INTERRUPTED = 130


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is no option (``-q`` takes none)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if command_of(args) in STOPPED_LIKE_CTRL_C:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        from stylebox import cli

        return cli.main(args)
    except KeyboardInterrupt:
        # One that lands outside the command's own handler: while the CLI loads, or in
        # the moments between its steps (as it set its own SIGTERM handler, a Ctrl-C
        # ended it with a traceback and -2). A second one is not let in while it is said.
        stop_listening()
        print("stylebox: interrupted", file=sys.stderr)
        exit_interrupted()


def stop_listening() -> None:
    """Ignore Ctrl-C and SIGTERM from now on: the command is saying it was interrupted, and
    another would say it again (or end it with a traceback) on the way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_interrupted() -> NoReturn:
    """End the process with 130 at once, output flushed. A Ctrl-C that lands while a
    library runs Python code of its own as it loads (PyTorch does) leaves CPython set to end
    the process by the signal at its exit, caught or not: it ended with -2, not 130."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
