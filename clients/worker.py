"""The device's worker: one long-lived process that computes the store's ``train`` answers.

Under Flower's deployment engine every message starts a new ``flwr-clientapp`` process, which would
import torch, build the model and read the user's data again for each training message. ``fedpers-client
join`` starts this worker beside the SuperNode instead: it keeps torch, the model (and what
:mod:`clients.tasks` caches per process) loaded between messages and runs, and the ClientApp
(:mod:`clients.app`, still run by ``flwr-clientapp`` with the SecAgg+ mods) hands it the message's
instructions over a Unix-domain socket in the store directory (:mod:`clients.worker_protocol`). Without a
reachable worker the ClientApp computes in its own process, as on the simulation engine.

It computes exactly what the ClientApp would (:func:`clients.app.compute_train`: ``clients.tasks.prepare``
then ``answer``), so nothing is weakened: the store is opened per request with the key from the
environment it inherited from ``join`` (:mod:`clients.unlock`), consent and the budget are checked per
request, a refusal comes back as a refusal, and uploads stay cached per round in the store.

Who may ask: the socket is created with mode 0600 in the store directory, a connection from another
user id is closed unanswered (``SO_PEERCRED``), and only requests for this worker's own store are served.
The worker stops when its parent (``join``) exits, on SIGTERM or SIGINT, and removes its socket.

Between rounds it also computes ahead what the next round's budget check will compose (the user's
spending so far plus the round's DP-SGD release once more; :func:`anticipate_budget_checks`): each
composition takes seconds, and the accountant remembers it per process.

    python -m clients.worker --store DIR [--parent-pid PID]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from clients.consent import ParticipationRefused
from clients.worker_protocol import (
    ERROR,
    OK,
    REFUSED,
    ProtocolError,
    Request,
    Response,
    read_frame,
    socket_path,
)

log = logging.getLogger("fedpers.worker")
PARENT_POLL_SECONDS = 0.5


class WorkerStartError(RuntimeError):
    """The worker cannot serve this store (another worker holds the socket, the path is too long)."""


def _listening(path: Path) -> bool:
    """Whether some process accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bind(path: Path) -> socket.socket:
    """A listening socket at ``path`` that only this user can connect to (mode 0600).

    A socket file left by a worker that died is replaced; one a live worker listens on is an error."""
    if path.exists() or path.is_socket():
        if _listening(path):
            raise WorkerStartError(f"{path}: another worker already serves this store")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # no moment where the socket is reachable with wider permissions
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as err:
        sock.close()
        raise WorkerStartError(f"{path}: cannot listen here: {err}") from err
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    sock.listen(8)
    return sock


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end (``None`` where the platform does not tell)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _same_store(node_config: dict, store: Path) -> bool:
    named = node_config.get("store")
    return bool(named) and Path(str(named)).resolve() == store


def anticipate_budget_checks(instructions, node_config: dict) -> int:
    """Compute now the compositions the next round's budget checks will ask for: each ledger's events
    plus the release this run recorded last on it (DP-SGD; the user-level release under user-level
    DP), which the next round records again unless its plan changed. Only warms the accountant's
    per-process memory (:func:`fedpers.privacy.accounting.epsilon`); nothing is recorded. How many."""
    from clients.device import node_store
    from fedpers.privacy.accounting import epsilon_report
    from fedpers.privacy.user_level import USER_LEVEL_PURPOSE

    config = instructions.config
    if instructions.final or not (config.privacy.dp or config.privacy.user_dp):
        return 0
    device = node_store(node_config)
    ledgers = []
    if config.privacy.dp:
        ledgers.append((device.ledger(config.privacy.delta), "dp-sgd"))
    if config.privacy.user_dp:
        ledgers.append((device.user_level_ledger(config.privacy.delta), USER_LEVEL_PURPOSE))
    done = 0
    for ledger, purpose in ledgers:
        events = ledger.events()
        last = next(
            (
                e
                for e in reversed(ledger.entries)
                if e.purpose == purpose and e.details.get("run_id") == instructions.run_id
            ),
            None,
        )
        if last is not None and last.events:
            epsilon_report([*events, *last.events], ledger.delta)
            done += 1
    return done


def handle(request: Request, store: Path) -> Response:
    """The response to ``request`` for the store in ``store`` (computed in this process)."""
    if request.op == "ping":
        return Response(OK)
    if not _same_store(request.node_config, store):
        return Response(
            ERROR,
            error_type="PermissionError",
            detail=f"this worker serves store {store}, not {request.node_config.get('store')!r}",
        )
    from clients.app import compute_persona, compute_train
    from fedpers.instructions import PERSONA_INDEX, RoundInstructions

    timings: dict[str, float] = {}
    try:
        instructions = RoundInstructions.from_record(request.record)
        if request.op == "train":
            arrays, metrics = compute_train(instructions, request.node_config, timings)
            return Response(OK, list(arrays), dict(metrics), timings=timings)
        index = compute_persona(instructions, request.node_config, timings)
        return Response(OK, metrics={PERSONA_INDEX: index}, timings=timings)
    except ParticipationRefused as err:
        log.info("refused a %s request: %s", request.op, err)
        return Response(REFUSED, reason=str(err), detail=err.detail, timings=timings)
    except Exception as err:  # the ClientApp raises it again, as if computed there
        if isinstance(err, ValueError | PermissionError):
            log.warning("a %s request failed: %s", request.op, err)
        else:
            log.exception("a %s request failed", request.op)
        return Response(ERROR, error_type=type(err).__name__, detail=str(err), timings=timings)


class Worker:
    """Serves one store's socket, one request at a time, until :meth:`stop`."""

    def __init__(self, store: Path | str) -> None:
        from clients.device import DeviceStore

        # unlocks the store as the ClientApp would: a missing or wrong key fails here, at start
        device = DeviceStore.from_env(store)
        self.store = device.directory.resolve()
        self.user_id = device.user_id
        self.path = socket_path(self.store)
        self.listener = bind(self.path)
        self._inode = os.stat(self.path).st_ino
        self._lock = threading.Lock()
        self._stopped = False

    def preload(self) -> None:
        """Import what a training request needs (torch, transformers, peft, Opacus) before the first one."""
        started = time.perf_counter()
        import clients.tasks  # noqa: F401

        log.info("ready in %.1f s (imports)", time.perf_counter() - started)

    def serve_one(self) -> None:
        """Accept one connection and answer it; a connection that goes away is logged, not fatal."""
        conn, _ = self.listener.accept()
        with conn:
            try:
                answered = self._answer(conn)
            except OSError as err:  # the ClientApp is gone (its SuperNode stopped it)
                log.warning("connection dropped: %s", err)
                return
        if answered is not None and answered[0].op == "train" and answered[1].status == OK:
            threading.Thread(
                target=self._anticipate,
                args=(answered[0],),
                name="fedpers-worker-ahead",
                daemon=True,
            ).start()

    def _answer(self, conn: socket.socket) -> tuple[Request, Response] | None:
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            log.warning("closed a connection from user id %d", uid)
            return None
        if not conn.recv(1, socket.MSG_PEEK):
            return None  # connected and left without a word: a check whether a worker listens
        try:
            request = Request.decode(*read_frame(conn))
        except (ProtocolError, KeyError, TypeError, ValueError) as err:
            log.warning("unreadable request: %s", err)
            conn.sendall(Response(ERROR, error_type="ProtocolError", detail=str(err)).encode())
            return None
        with self._lock:
            started = time.perf_counter()
            response = handle(request, self.store)
        log.info("%s: %s in %.1f s", request.op, response.status, time.perf_counter() - started)
        conn.sendall(response.encode())
        return request, response

    def serve(self) -> None:
        while not self._stopped:
            try:
                self.serve_one()
            except OSError:
                if self._stopped:
                    return
                raise

    def stop(self) -> None:
        """Stop listening and remove the socket (only if it is still this worker's)."""
        self._stopped = True
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self.listener.close()

    def _anticipate(self, request: Request) -> None:
        """:func:`anticipate_budget_checks`, right after answering; a request arriving meanwhile waits
        for it (it would compute the same). Not at a lower priority: a thread niced down could hold the
        lock for long on a busy machine while the next round's request waits behind it."""
        from fedpers.instructions import RoundInstructions

        with self._lock:
            started = time.perf_counter()
            try:
                done = anticipate_budget_checks(
                    RoundInstructions.from_record(request.record), request.node_config
                )
            except Exception as err:  # only a head start: the round computes it anyway
                log.warning("could not compute the next budget check ahead: %s", err)
                return
            if done:
                log.info(
                    "next round's budget check computed ahead in %.1f s",
                    time.perf_counter() - started,
                )


def _parent_alive(parent_pid: int, initial_ppid: int) -> bool:
    if parent_pid == initial_ppid and os.getppid() != initial_ppid:
        return False  # re-parented: the parent exited
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_parent(
    parent_pid: int, on_exit, interval: float = PARENT_POLL_SECONDS
) -> threading.Thread:
    """A daemon thread that calls ``on_exit()`` once process ``parent_pid`` is gone."""
    initial = os.getppid()

    def watch() -> None:
        while _parent_alive(parent_pid, initial):
            time.sleep(interval)
        log.info("parent process %d exited: stopping", parent_pid)
        on_exit()

    thread = threading.Thread(target=watch, name="fedpers-worker-parent", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m clients.worker",
        description="Keep the model loaded and answer the ClientApp's training requests for one store.",
    )
    p.add_argument("--store", required=True, type=Path, help="the device's encrypted store")
    p.add_argument("--parent-pid", type=int, help="stop when this process exits")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s fedpers worker: %(message)s", stream=sys.stderr
    )
    try:
        worker = Worker(args.store)
    except Exception as err:  # the SuperNode runs on; its ClientApps compute in-process
        log.error("not started: %s", err)
        return 2

    def leave(*_args) -> None:
        worker.stop()
        os._exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, leave)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, leave)
    log.info("serving user %s at %s", worker.user_id, worker.path)
    try:
        worker.preload()
        worker.serve()
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
