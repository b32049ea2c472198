"""Starting Flower's own commands (``flower-superlink``, ``flower-supernode``, ``flwr``) from this environment.

Flower's processes start further ones by name (``flower-superexec``, ``flwr-clientapp``,
``flwr-serverapp``), so the children get this interpreter's ``bin`` directory first on ``PATH``:
they run the same installation even when the environment was not activated.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def bin_dir() -> Path:
    """The directory of this interpreter's console scripts (a virtual environment's ``bin``)."""
    return Path(sys.executable).parent


def executable(name: str) -> str:
    """The path of console script ``name``: beside this interpreter, else on ``PATH``."""
    local = bin_dir() / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name}: not found in {bin_dir()} nor on PATH (is flwr==1.41.0 installed?)"
        )
    return found


def child_env(extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment with :func:`bin_dir` first on ``PATH``, ``extra`` set and ``drop`` removed."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")])
    env.update(extra or {})
    return env


def run_foreground(
    command: Sequence[str],
    env: Mapping[str, str],
    new_session: bool = False,
    after: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Run ``command`` until it exits; SIGINT and SIGTERM are passed on to it. Its exit status.

    ``new_session``: the command leads a process group of its own (what it starts can then be stopped together);
    ``after(process)`` runs once it has exited or this process is interrupted, e.g. to stop what it left running."""
    proc = subprocess.Popen(list(command), env=dict(env), start_new_session=new_session)

    def forward(signum, _frame) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if after is not None:
            after(proc)
