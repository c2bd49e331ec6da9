"""The ``stylebox`` command's entry point, light enough to take Ctrl-C from the start.

Loading the CLI takes about a second (pydantic, the plugins' commands). A Ctrl-C then
printed a traceback of the imports and a SIGTERM ended ``batch`` with 143, where a moment
later both end it with one line and exit 130: this module stands guard meanwhile.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

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
    except KeyboardInterrupt:
        print("stylebox: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
