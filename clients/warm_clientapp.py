"""A ``flwr-clientapp`` process started ahead of its message: Flower imported, waiting for its task.

Flower's ``flwr-clientapp`` is started for one message (its token on the command line), pulls that message
from the SuperNode's Runtime API, runs the ClientApp and exits (``flwr.supernode.runtime.run_clientapp``).
Most of its start is the interpreter and Flower's imports. This process does that part before there is a
message: it imports Flower's ClientApp runtime, then waits for one line on its standard input, a JSON
:class:`Launch` from :class:`clients.superexec.WarmExecutor`, and calls Flower's ``run_clientapp`` with it,
exactly as ``flwr-clientapp`` does with its arguments. Then it exits: one message per process, as in
Flower, so nothing of one message's ClientApp outlives it. If its standard input closes before a task
comes (the SuperExec has gone), it exits without running anything.

The token reaches the process through a pipe, not the command line, so other local users do not see it
in the process list.

    python -P .../clients/warm_clientapp.py     (started by clients.superexec; not a user command)

It runs as a file, not as ``clients.warm_clientapp``, and ``-P`` keeps its folder off ``sys.path``: the
ClientApp comes from the app bundle Flower installs, as in ``flwr-clientapp``, and an installed ``clients``
package imported beforehand would take its place. So it imports nothing of this project.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import TextIO

TASK_ARRIVED_ENV = "FEDPERS_TASK_ARRIVED"
"""Set in a warm process to the Unix time its task arrived (:mod:`clients.timings` counts from it)."""


@dataclass(frozen=True)
class Launch:
    """What ``flwr-clientapp`` would get on its command line for one task (Flower's ``ExecutionSpec``)."""

    runtime_api_address: str
    token: str
    insecure: bool
    root_certificates_path: str | None
    parent_pid: int | None
    runtime_dependency_install: bool

    def line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def parse(cls, line: str) -> Launch:
        """The launch in ``line``; ``ValueError`` naming the field when it is not one."""
        value = json.loads(line)
        if not isinstance(value, dict) or set(value) != set(cls.__dataclass_fields__):
            raise ValueError(f"a launch has the fields {sorted(cls.__dataclass_fields__)}")
        for name in ("runtime_api_address", "token"):
            if not isinstance(value[name], str) or not value[name].strip():
                raise ValueError(f"launch field {name!r} must be a non-empty string")
        for name in ("insecure", "runtime_dependency_install"):
            if not isinstance(value[name], bool):
                raise ValueError(f"launch field {name!r} must be true or false")
        if value["root_certificates_path"] is not None and not isinstance(
            value["root_certificates_path"], str
        ):
            raise ValueError("launch field 'root_certificates_path' must be a string or null")
        pid = value["parent_pid"]
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise ValueError("launch field 'parent_pid' must be a positive integer or null")
        return cls(**value)


def serve(stdin: TextIO) -> int:
    """Import Flower's ClientApp runtime, then run the one task that comes on ``stdin``."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    if "clients" in sys.modules:
        raise RuntimeError(
            "the warm ClientApp process imported the installed 'clients' package: the app bundle's "
            "ClientApp would not be the one that runs (start it as a file, with python -P)"
        )
    line = stdin.readline()
    if not line.strip():
        return 0  # the SuperExec closed the pipe: no task for this process
    launch = Launch.parse(line)
    os.environ[TASK_ARRIVED_ENV] = repr(time.time())
    run_clientapp(  # exits the process through Flower's flwr_exit, as flwr-clientapp does
        runtime_api_address=launch.runtime_api_address,
        token=launch.token,
        insecure=launch.insecure,
        certificates=validate_and_resolve_root_certificates(
            launch.root_certificates_path, launch.insecure
        ),
        parent_pid=launch.parent_pid,
        runtime_dependency_install=launch.runtime_dependency_install,
    )
    return 0


def main() -> None:
    sys.argv[0] = "flwr-clientapp"
    raise SystemExit(serve(sys.stdin))


if __name__ == "__main__":
    main()
