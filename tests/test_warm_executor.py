"""The device's SuperExec: a ClientApp process started ahead of its task, handed the task's token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.supercore.constant import ExecutorType, TaskType
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec

from clients import superexec
from clients.warm_clientapp import Launch

ROOT = Path(__file__).resolve().parents[1]


def _spec(task_type=TaskType.CLIENT_APP, token="tok-1", suppress=False) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:9094",
        token=token,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=4242,
        suppress_output=suppress,
        task_id=7,
    )


def _recorder(tmp_path: Path) -> list[str]:
    """A stand-in warm process: writes its pid and the line it gets to a file named by its pid."""
    script = tmp_path / "warm.py"
    script.write_text(
        "import os, sys, pathlib\n"
        "line = sys.stdin.readline()\n"
        f"pathlib.Path({str(tmp_path)!r}, f'{{os.getpid()}}.txt').write_text(line)\n"
    )
    return [sys.executable, str(script)]


def _wait(proc: subprocess.Popen) -> int:
    return proc.wait(timeout=30)


def test_a_launch_round_trips_and_a_bad_one_names_its_field():
    launch = Launch("127.0.0.1:9094", "secret-token", True, None, 12, False)
    assert Launch.parse(launch.line()) == launch
    bad = json.loads(launch.line()) | {"parent_pid": -3}
    with pytest.raises(ValueError, match="parent_pid"):
        Launch.parse(json.dumps(bad))
    with pytest.raises(ValueError, match="token"):
        Launch.parse(json.dumps(json.loads(launch.line()) | {"token": " "}))
    with pytest.raises(ValueError, match="fields"):
        Launch.parse(json.dumps({"token": "x"}))


def test_the_task_goes_to_the_process_started_ahead_and_the_next_one_starts(tmp_path):
    executor = superexec.WarmExecutor(_recorder(tmp_path))
    executor.reconcile()
    ahead = executor._ready
    assert ahead is not None and ahead.poll() is None  # started before any task

    assert executor.launch(_spec(token="tok-1")).status.value == "accepted"
    assert _wait(ahead) == 0
    got = Launch.parse((tmp_path / f"{ahead.pid}.txt").read_text())
    assert got == Launch("127.0.0.1:9094", "tok-1", True, None, 4242, False)
    nxt = executor._ready
    assert nxt is not None and nxt.pid != ahead.pid and nxt.poll() is None
    assert (executor.warm_launches, executor.cold_launches) == (1, 0)

    executor.launch(_spec(token="tok-2"))
    assert _wait(nxt) == 0
    assert Launch.parse((tmp_path / f"{nxt.pid}.txt").read_text()).token == "tok-2"

    idle = executor._ready
    executor.close()
    assert idle is not None and idle.poll() is not None  # the waiting process is stopped
    assert (tmp_path / f"{idle.pid}.txt").read_text() == ""  # and ran no task


def test_other_tasks_and_a_dead_warm_process_take_flowers_cold_start(tmp_path, monkeypatch):
    cold: list[str] = []
    monkeypatch.setattr(
        SubprocessExecutor, "launch", lambda self, spec: cold.append(spec.token) or "cold"
    )
    executor = superexec.WarmExecutor(_recorder(tmp_path))
    executor.reconcile()
    assert executor.launch(_spec(TaskType.SERVER_APP, token="srv")) == "cold"
    assert executor.launch(_spec(token="quiet", suppress=True)) == "cold"
    ahead = executor._ready
    assert ahead is not None
    ahead.kill()
    ahead.wait()
    assert executor.launch(_spec(token="after-death")) == "cold"
    assert cold == ["srv", "quiet", "after-death"]
    assert executor._ready is not None and executor._ready.poll() is None  # a new one is ready
    executor.close()


def test_the_real_warm_process_exits_quietly_without_a_task_and_refuses_a_bad_launch():
    command = list(superexec.WARM_COMMAND)
    done = subprocess.run(command, input="", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        command, input='{"token": 1}\n', capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert bad.returncode != 0 and "fields" in bad.stderr


def test_the_superexec_entry_point_swaps_only_the_subprocess_executor():
    import importlib

    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")
    original = loop.get_executor
    try:
        assert superexec.install(loop)
        executor = loop.get_executor(ExecutorType.SUBPROCESS)
        assert isinstance(executor, superexec.WarmExecutor)
        with pytest.raises(ValueError):  # the Kubernetes executor still needs its config
            loop.get_executor(ExecutorType.KUBERNETES)
    finally:
        loop.get_executor = original
    assert not superexec.install(type(sys)("not_flower"))


def test_the_supernode_starts_this_superexec_in_place_of_flowers(monkeypatch):
    import flwr.supernode.start_client_internal as node

    started: list[list[str]] = []
    monkeypatch.setattr(node, "subprocess", subprocess)
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(list(args)))
    assert superexec.install_on_supernode(node)
    node.subprocess.Popen(["flower-superexec", "--insecure", "--runtime-api-address", "x:1"])
    node.subprocess.Popen(["something-else", "--flag"])
    assert started == [
        [*superexec.SUPEREXEC_COMMAND, "--insecure", "--runtime-api-address", "x:1"],
        ["something-else", "--flag"],
    ]
    assert node.subprocess.PIPE == subprocess.PIPE  # the rest of the module as it was
    assert not superexec.install_on_supernode(type(sys)("not_flower"))
