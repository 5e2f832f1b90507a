"""What a CLI run shows in the terminal: log lines without tracebacks or Prefect's state lines; all goes to a log file.

Prefect logs a failing task's or flow's exception with its traceback (30 lines or more each), and the CLI then
prints the same error as one `astft:` line. For errors astft expects (their message names the fix) the
tracebacks only bury that line, so the console handlers Prefect configured are given a formatter that leaves
them out, and a file handler beside them keeps every line with its traceback, for a bug report. `--debug`
keeps the tracebacks on the terminal too. Deployment runs (workers) are untouched: this is the CLI's.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from lib.core.layout import LOGS_FOLDER


class WithoutTraceback(logging.Formatter):
    """Format as `inner` does, leaving out the exception's traceback and any stack."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None  # restored: other handlers still see them
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class PrefectStates(logging.Filter):
    """Drops Prefect's state lines from the terminal: a flow run beginning, a task or flow run that completed (or
    was served from its cache), and, unless --debug, the four lines that each repeat a failure's whole message
    (task failed, its state, flow exception, its state), which the CLI's one `astft:` line then says once. Lines of
    astft's own (a failed member of an ensemble, warnings) stay; the log file and the UI keep everything."""

    ROUTINE = ("Beginning flow run", "Finished in state Completed(", "Finished in state Cached(")
    FAILURE = ("Task run failed with exception", "Finished in state Failed(", "Encountered exception during execution",
               "Finished in state Crashed(", "Crash detected!")

    def __init__(self, debug: bool):
        super().__init__()
        self.dropped = self.ROUTINE if debug else self.ROUTINE + self.FAILURE

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("prefect.") and str(record.msg).startswith(self.dropped))


class RunLogFile(logging.FileHandler):
    """The run's log file; on the first line it cannot write (its disk filled up) it says so once on the terminal
    and stops, instead of a traceback per log line burying the run's own `astft:` line."""

    def handleError(self, record: logging.LogRecord) -> None:
        logging.getLogger().removeHandler(self)
        sys.stderr.write(f"astft: cannot write the log file {self.baseFilename} any more (a full disk?); the rest "
                         "of the run's log goes to the terminal only\n")


def console_loggers() -> list[logging.Logger]:
    """The loggers that hold one of Prefect's console handlers (the root, and the server's uvicorn and fastapi)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    candidates = [logging.getLogger(), *(
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    )]
    return [
        logger for logger in candidates
        if any(isinstance(handler, PrefectConsoleHandler) for handler in logger.handlers)
    ]


def log_to_file(output_dir: Path, debug: bool) -> Path | None:
    """Send every CLI log line, tracebacks included, to <output_dir>/logs/astft-<time>-<pid>.log, and keep the
    tracebacks off the terminal unless debug. The file's path, or None where output_dir cannot take it."""
    import prefect.main  # noqa: F401 - sets up Prefect's logging (its console handlers), which is adjusted below
    from prefect.logging.handlers import PrefectConsoleHandler

    folder = Path(output_dir) / LOGS_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"astft-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        file_handler = RunLogFile(path, encoding="utf-8")  # created now: an error names it at once
    except OSError:  # a read-only or full output folder: the plan refuses the first; keep the terminal as it is
        return None
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(file_handler)  # the root: prefect's and lib's loggers propagate to it
    for logger in console_loggers():
        for handler in logger.handlers:
            if not isinstance(handler, PrefectConsoleHandler) or any(
                isinstance(existing, PrefectStates) for existing in handler.filters
            ):
                continue
            handler.addFilter(PrefectStates(debug))
            if not debug:
                handler.setFormatter(WithoutTraceback(handler.formatter))
    return path
