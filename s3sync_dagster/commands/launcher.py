"""Where the `s3sync` command starts: a query goes to the resident query process when one is running, importing
nothing else (commands/resident.py); anything else, and a query with none running, is answered by
commands/cli.py."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Sequence

from s3sync_dagster.commands import resident

EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`


def main(argv: Sequence[str] | None = None) -> int:
    """The `s3sync` command, ended quietly when what reads its output stops reading (`s3sync query ... | head`):
    the exit status a Unix tool killed by SIGPIPE gives, and no traceback."""
    try:
        code = _answer(argv)
        sys.stdout.flush()  # inside the try: what is still buffered meets the closed pipe here, not at exit
    except BrokenPipeError:
        if not _stdout_closed():  # a pipe to another process broke: an error of its own, said as one
            raise
        # Python flushes standard output again as it exits; pointed at /dev/null, that flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE
    return code


def _stdout_closed() -> bool:
    """Whether what reads standard output has gone (the pipe reports an error to a writer)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError):
        return False


def _answer(argv: Sequence[str] | None) -> int:
    """The `s3sync` command: a query goes to the resident process if one is running; anything else (and a
    query with none, or with one that does not answer within resident.ANSWER_WAIT_S) is answered here, by
    commands/cli.py."""
    args = list(sys.argv[1:] if argv is None else argv)
    querying = args[:1] == ["query"] and resident.enabled() and not _asks_for_help(args)
    environment, where = resident.launched(dict(os.environ), resident.address())
    if querying:
        try:
            # Its output is captured there: whether the words may be set in bold is this terminal's to say.
            shown = [*args, "--bold"] if sys.stdout.isatty() and "--bold" not in args else args
            answer = resident.consult({"argv": shown, "cwd": os.getcwd()}, where)
        except resident.Unanswered as unanswered:
            if str(unanswered):  # said once: a process that does not answer, or a path it did not make
                print(f"s3sync: {unanswered}; answered here", file=sys.stderr)
        else:
            if isinstance(answer.get("code"), int):
                sys.stdout.write(answer.get("stdout", ""))
                sys.stderr.write(answer.get("stderr", ""))
                return int(answer["code"])
    from s3sync_dagster.commands.cli import main as answer_here

    code = answer_here(args)
    if querying and code == 0:
        resident.start(where, environment, warm=args)
    return code


def _asks_for_help(args: Sequence[str]) -> bool:
    return any(arg in {"-h", "--help"} for arg in args)
