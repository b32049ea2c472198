"""Flower's ``flower-supernode``, asking the SuperLink for the next message sooner while a run is active.

Flower's SuperNode (``flwr.supernode.start_client_internal``) sleeps 3 s whenever it asks the SuperLink
for a message and gets none, and checks every 0.5 s whether its ClientApp has replied. A SecAgg+ round is
four messages in a row, and a device that has just replied finds nothing yet (the server waits for the
other devices) and goes to sleep, so each stage can wait up to 3 s on it. This entry point runs Flower's
``flower-supernode`` with the same arguments and changes only those two waits, and only for
:data:`FOLLOW_UP_SECONDS` after the SuperNode last received a message: it asks again after
:data:`ACTIVE_POLL_SECONDS` and checks for the reply every :data:`REPLY_POLL_SECONDS`. An idle device
keeps Flower's 3 s, so the SuperLink sees no more requests from devices that are not in a round.

It also has the SuperNode start :mod:`clients.superexec` where it starts Flower's ``flower-superexec``:
Flower's SuperExec with the next ClientApp process started before its message arrives.

Where the installed Flower does not have those waits where this module expects them, it warns and runs
``flower-supernode`` unchanged.

Two options are this module's, not Flower's (they are taken out before Flower reads the rest):
``--parent-pid PID`` stops the SuperNode (as Ctrl+C does) once process ``PID`` (``join``) is gone, and
``--max-retry-delay SECONDS`` bounds each wait between two tries to reach the SuperLink (Flower's
exponential backoff, ``MAX_RETRY_DELAY`` = 20 s by default). When the SuperNode gives up on a SuperLink
that is gone (``--max-wait-time`` or ``--max-retries`` reached), Flower's loop returns; this module then
exits with :data:`clients.join.EXIT_SUPERLINK_LOST` at once (Flower would keep the process alive on
its Runtime API thread).

    python -m clients.supernode --superlink HOST:PORT ...   (flower-supernode's arguments)
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from types import ModuleType

IDLE_POLL_SECONDS = 3.0  # Flower's sleep after a pull that returned nothing
REPLY_WAIT_SECONDS = 0.5  # Flower's sleep while waiting for the ClientApp's reply
ACTIVE_POLL_SECONDS = 0.25
REPLY_POLL_SECONDS = 0.1
FOLLOW_UP_SECONDS = 120.0


class FollowUpClock:
    """The ``time`` module as the SuperNode's main loop sees it: its waits shortened while a run is active
    (within ``follow_up`` seconds of the last message received)."""

    def __init__(
        self,
        active_poll: float = ACTIVE_POLL_SECONDS,
        reply_poll: float = REPLY_POLL_SECONDS,
        follow_up: float = FOLLOW_UP_SECONDS,
    ) -> None:
        self.active_poll, self.reply_poll, self.follow_up = active_poll, reply_poll, follow_up
        self.last_message = float("-inf")

    def __getattr__(self, name: str):
        return getattr(time, name)

    def received(self) -> None:
        self.last_message = time.monotonic()

    def active(self) -> bool:
        return time.monotonic() - self.last_message < self.follow_up

    def wait_for(self, seconds: float) -> float:
        """How long the loop really waits when Flower asks for ``seconds``."""
        if self.active():
            if seconds == IDLE_POLL_SECONDS:
                return self.active_poll
            if seconds == REPLY_WAIT_SECONDS:
                return self.reply_poll
        return seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(self.wait_for(seconds))


def install(loop: ModuleType, clock: FollowUpClock) -> bool:
    """Make the SuperNode's main loop (module ``loop``) wait on ``clock``; ``False`` if ``loop`` does not
    look like the Flower loop this was written for (nothing is changed then)."""
    pull = getattr(loop, "_pull_and_store_message", None)
    if getattr(loop, "time", None) is not time or not callable(pull):
        return False

    def pull_and_store_message(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            clock.received()
        return run_id

    loop._pull_and_store_message = pull_and_store_message  # type: ignore[attr-defined]
    loop.time = clock  # type: ignore[attr-defined]
    return True


def take_option(argv: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` (or ``name=VALUE``) from ``argv``; the value, or None if absent."""
    for i, arg in enumerate(argv):
        if arg == name:
            if i + 1 >= len(argv):
                raise SystemExit(f"{name} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def bound_retry_delay(seconds: float) -> None:
    """Make every wait of Flower's retries (SuperLink connection) at most ``seconds``."""
    from flwr.supercore.retry import http_retry

    if not seconds > 0:
        raise SystemExit(f"--max-retry-delay must be > 0 seconds, got {seconds}")
    http_retry.MAX_RETRY_DELAY = seconds  # read by each new retry invoker's backoff


def main() -> None:
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    from clients import superexec
    from clients.join import EXIT_SUPERLINK_LOST

    argv = sys.argv[1:]
    parent = take_option(argv, "--parent-pid")
    delay = take_option(argv, "--max-retry-delay")
    if delay is not None:
        bound_retry_delay(float(delay))
    if parent is not None:
        start_parent_process_monitor(int(parent))
    if not install(start_client_internal, FollowUpClock()):
        warnings.warn(
            "this Flower's SuperNode loop is not the one clients.supernode knows: "
            "it keeps Flower's 3 s poll",
            stacklevel=1,
        )
    if not superexec.install_on_supernode(start_client_internal):
        warnings.warn(
            "this Flower's SuperNode does not start its SuperExec the way clients.supernode "
            "knows: every ClientApp process starts cold",
            stacklevel=1,
        )
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()
    # Flower's loop only returns once it gave up reaching the SuperLink
    print(
        "SuperNode: gave up reaching the SuperLink (--max-wait-time / --max-retries); exiting",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(EXIT_SUPERLINK_LOST)


if __name__ == "__main__":
    main()
