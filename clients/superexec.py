"""Flower's SuperExec for a device, with the next ClientApp process started before its message arrives.

The SuperNode starts Flower's SuperExec, which asks the SuperNode's Runtime API for a task and starts one
``flwr-clientapp`` process per task (Flower's ``SubprocessExecutor``). A SecAgg+ round is four messages in a
row, so every round pays four interpreter starts and four imports of Flower (1.8 s each measured on the
project's 2-core machine, on the critical path of every stage).

This entry point is Flower's ``flower-superexec``, unchanged but for its executor. :class:`WarmExecutor`
keeps one process started ahead (:mod:`clients.warm_clientapp`: interpreter up, Flower's ClientApp runtime
imported, waiting on a pipe). A ClientApp task's launch hands that process the task's token (the fields
Flower's executor would put on the ``flwr-clientapp`` command line) and starts the next one at once, off the
critical path. The process runs Flower's own ``run_clientapp`` for that token and exits, so every message
still gets a fresh process and the ClientApp stays Flower's. Tasks of other types, and a launch whose warm
process has died, go to Flower's executor as before.

    python -m clients.superexec  (flower-superexec's arguments; started by clients.supernode)
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from flwr.supercore.constant import ExecutorType, TaskType
from flwr.supercore.superexec.executor import LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec

from clients import warm_clientapp
from clients.warm_clientapp import Launch

WARM_COMMAND: tuple[str, ...] = (sys.executable, "-P", str(Path(warm_clientapp.__file__).resolve()))
"""The warm process: a file run with its folder kept off ``sys.path`` (see :mod:`clients.warm_clientapp`)."""
STOP_SECONDS = 5.0


class WarmExecutor(SubprocessExecutor):
    """Flower's subprocess executor with one ClientApp process started ahead of its task.

    ``command`` starts a process that waits for one :class:`~clients.warm_clientapp.Launch` line on its
    standard input. The first warm process starts on the first call of :meth:`reconcile` (SuperExec's main
    loop calls it before every poll) or :meth:`launch`; each launch starts the next.
    """

    def __init__(self, command: Sequence[str] = WARM_COMMAND) -> None:
        self.command = tuple(command)
        self._ready: subprocess.Popen | None = None
        self.launched: list[subprocess.Popen] = []
        self.warm_launches = 0
        self.cold_launches = 0

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, stdin=subprocess.PIPE, text=True)

    def reconcile(self) -> None:
        """Keep one warm process ready; forget launched processes that have exited."""
        self.launched = [p for p in self.launched if p.poll() is None]
        if self._ready is None or self._ready.poll() is not None:
            self._ready = self._start()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP or spec.suppress_output:
            self.cold_launches += 1
            return super().launch(spec)
        proc = self._ready
        self._ready = None
        launch = Launch(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            root_certificates_path=spec.root_certificates_path,
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        try:
            if proc is None or proc.poll() is not None or proc.stdin is None:
                raise BrokenPipeError("no warm ClientApp process is running")
            proc.stdin.write(launch.line())
            proc.stdin.close()
        except OSError:
            self.cold_launches += 1
            result = super().launch(spec)
        else:
            self.warm_launches += 1
            self.launched.append(proc)
            result = LaunchResult.accepted()
        self.reconcile()
        return result

    def close(self) -> None:
        """Stop the waiting process (it has no task); launched ones finish their task on their own."""
        proc, self._ready = self._ready, None
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # it exits without running anything
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def warm_get_executor(flower_get_executor: Callable) -> Callable:
    """Flower's ``get_executor`` with :class:`WarmExecutor` for the subprocess executor."""

    def get_executor(executor_type, executor_config=None, **kwargs):
        if executor_type == ExecutorType.SUBPROCESS:
            return WarmExecutor()
        return flower_get_executor(executor_type, executor_config, **kwargs)

    return get_executor


SUPEREXEC_COMMAND: tuple[str, ...] = (sys.executable, "-m", "clients.superexec")


class _Subprocess:
    """The ``subprocess`` module as the SuperNode sees it: ``flower-superexec`` started as this module."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, *rest, **kwargs):  # subprocess.Popen, by its name
        if isinstance(args, (list, tuple)) and args and args[0] == "flower-superexec":
            args = [*SUPEREXEC_COMMAND, *args[1:]]
        return subprocess.Popen(args, *rest, **kwargs)


def install_on_supernode(node: ModuleType) -> bool:
    """Make Flower's SuperNode (module ``node``, ``flwr.supernode.start_client_internal``) start this
    SuperExec where it starts ``flower-superexec``; ``False`` (nothing changed) if ``node`` does not look like
    the Flower module this was written for."""
    if getattr(node, "subprocess", None) is not subprocess:
        return False
    node.subprocess = _Subprocess()  # type: ignore[attr-defined]
    return True


def install(loop: ModuleType) -> bool:
    """Make Flower's SuperExec loop (module ``loop``) use :class:`WarmExecutor`; ``False`` (nothing
    changed) if ``loop`` does not look like the Flower module this was written for."""
    flower_get_executor = getattr(loop, "get_executor", None)
    if not callable(flower_get_executor) or not callable(getattr(loop, "run_superexec", None)):
        return False
    loop.get_executor = warm_get_executor(flower_get_executor)  # type: ignore[attr-defined]
    return True


def main() -> None:
    from flwr.supercore.cli.flower_superexec import flower_superexec

    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")
    if not install(loop):
        warnings.warn(
            "this Flower's SuperExec is not the one clients.superexec knows: every ClientApp "
            "process starts cold",
            stacklevel=1,
        )
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
