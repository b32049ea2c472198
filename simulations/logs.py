"""The terminal of ``fedpers simulate`` is for fedpers' own progress: Flower's per-message log goes to the
run directory's log file (``RUN_DIR/run.log``, :data:`fedpers.rundir.LOG_FILE`).

Flower logs every message it handles (``configure_fit``, SecAgg+ stages at DEBUG on the clients) to its
``flwr`` logger, whose console handler prints INFO and up. A library that configures the root logger
(Opacus calls ``logging.basicConfig``) makes every ``flwr`` record print a second time, DEBUG included,
since ``flwr`` propagates to the root. During a run, :func:`run_log` and :func:`log_to_file` send the
whole ``flwr`` log to one file and keep only warnings and errors on the terminal, once each.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.common.logger import ConsoleHandler

# Flower's notices about its own API: the run's log file keeps them, the terminal does not
HIDDEN_NOTICES = ("DEPRECATED FEATURE", "PREVIEW FEATURE", "FEATURE UPDATE")


class _RunFile(logging.FileHandler):
    """The run's log file, appended to by the driver and by every simulated client's process."""


def _file_handler(path: Path, origin: str) -> logging.FileHandler:
    handler = _RunFile(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{origin}] %(message)s"))
    return handler


def _for_the_terminal(record: logging.LogRecord) -> bool:
    return not any(notice in str(record.msg) for notice in HIDDEN_NOTICES)


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if isinstance(h, ConsoleHandler)]


def log_to_file(path: str | Path, origin: str, console_level: int = logging.ERROR) -> None:
    """This process's ``flwr`` log, from now on: every record to ``path`` (appended), records of
    ``console_level`` and up to the console once. Calling it again with the same file does nothing."""
    logger = logging.getLogger("flwr")
    path = Path(path)
    for earlier in [h for h in logger.handlers if isinstance(h, _RunFile)]:
        if Path(earlier.baseFilename) == path.resolve():
            return
        logger.removeHandler(earlier)
        earlier.close()
    logger.addHandler(_file_handler(path, origin))
    for console in _console_handlers(logger):
        console.setLevel(console_level)
    logger.propagate = False


class _Terminal(logging.Handler):
    """Warnings and errors of the run for the terminal, written through ``write`` (above a live display)."""

    def __init__(self, write: Callable[[str], None], colored: bool) -> None:
        super().__init__(logging.WARNING)
        self.write = write
        self.addFilter(_for_the_terminal)
        # formats like Flower's terminal output (level name, colour)
        self.console = ConsoleHandler(colored=colored)

    def format(self, record: logging.LogRecord) -> str:
        return self.console.format(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def run_log(
    path: str | Path, write: Callable[[str], None] | None = None, colored: bool = False
) -> Iterator[Path]:
    """While the block runs, in this process: the whole ``flwr`` log (DEBUG included) goes to ``path``,
    and only its warnings and errors (not Flower's notices about its API) to ``write`` (standard error by
    default), once each. The handlers it displaces (Flower's console, an enclosing run's) and the logger's
    propagation come back afterwards."""
    logger = logging.getLogger("flwr")
    displaced = [h for h in logger.handlers if isinstance(h, ConsoleHandler | _Terminal | _RunFile)]
    propagate = logger.propagate
    to_file = _file_handler(Path(path), "server")
    terminal = _Terminal(write or (lambda text: print(text, file=sys.stderr, flush=True)), colored)
    for handler in displaced:
        logger.removeHandler(handler)
    logger.addHandler(to_file)
    logger.addHandler(terminal)
    logger.propagate = False
    try:
        yield Path(path)
    finally:
        logger.removeHandler(terminal)
        logger.removeHandler(to_file)
        to_file.close()
        for handler in displaced:
            logger.addHandler(handler)
        logger.propagate = propagate
