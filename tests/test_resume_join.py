"""A device when the SuperLink is gone: bounded backoff, a give-up after a stated time, and nothing left
running once the SuperNode has exited (its SuperExec, ClientApp processes, the worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients.join import (
    DEFAULT_MAX_WAIT_SECONDS,
    EXIT_SUPERLINK_LOST,
    JoinConfig,
    run_supernode,
    supernode_command,
)
from clients.supernode import take_option
from fedpers.network import free_port


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_a_supernode_gives_up_after_a_stated_time_by_default(tmp_path):
    command = supernode_command(JoinConfig("127.0.0.1:8000", insecure=True), tmp_path, "u1")
    assert float(_option(command, "--max-wait-time")) == DEFAULT_MAX_WAIT_SECONDS == 900.0
    assert _option(command, "--max-retries") is None  # the time bounds it
    command = supernode_command(
        JoinConfig(
            "127.0.0.1:8000", insecure=True, max_retries=5, max_wait_time=30, max_retry_delay=2
        ),
        tmp_path,
        "u1",
    )
    assert (_option(command, "--max-retries"), _option(command, "--max-wait-time")) == ("5", "30")
    assert _option(command, "--max-retry-delay") == "2"
    for bad in ({"max_wait_time": 0}, {"max_retries": -1}, {"max_retry_delay": -2.0}):
        with pytest.raises(ValueError, match="--max-"):
            JoinConfig("127.0.0.1:8000", insecure=True, **bad)


def test_the_supernode_entry_point_takes_its_own_options_out_of_flowers():
    argv = ["--superlink", "h:1", "--parent-pid", "42", "--max-retry-delay=3", "--insecure"]
    assert take_option(argv, "--parent-pid") == "42"
    assert take_option(argv, "--max-retry-delay") == "3"
    assert take_option(argv, "--max-retry-delay") is None
    assert argv == ["--superlink", "h:1", "--insecure"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone as far as work goes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_when_the_supernode_gives_up_what_it_started_is_stopped(tmp_path):
    """The stand-in SuperNode starts a long 'ClientApp' in its process group (as Flower's SuperExec does)
    and exits as a SuperNode that gave up on the SuperLink."""
    pid_file = tmp_path / "app.pid"
    supernode = [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        f"app = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(app.pid))\n"
        f"sys.exit({EXIT_SUPERLINK_LOST})",
    ]
    started = time.monotonic()
    assert run_supernode(supernode, dict(os.environ), None, os.getpid()) == EXIT_SUPERLINK_LOST
    app = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(app) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(app), "the app process outlived the SuperNode"
    assert time.monotonic() - started < 20


@pytest.mark.slow  # a real SuperLink and SuperNode (deployment engine)
def test_a_supernode_stops_within_its_bound_once_the_superlink_is_killed(tmp_path):
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    port = free_port()
    log = tmp_path / "superlink.log"
    superlink = subprocess.Popen(
        [str(Path(sys.executable).parent / "flower-superlink"), "--insecure", "--port", str(port)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    join = None
    try:
        deadline = time.monotonic() + 120
        while "Uvicorn running" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        node_log = tmp_path / "join.log"
        code = (
            "import os, sys\n"
            "from clients.join import JoinConfig, run_supernode, supernode_command\n"
            f"join = JoinConfig('127.0.0.1:{port}', insecure=True, max_wait_time=5, max_retry_delay=1)\n"
            f"sys.exit(run_supernode(supernode_command(join, {str(tmp_path)!r}, 'u1'), os.environ, None, os.getpid()))\n"
        )
        join = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=open(node_log, "wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 120
        while "SuperNode ID" not in node_log.read_text(errors="replace"):
            assert time.monotonic() < deadline and join.poll() is None, node_log.read_text()
            time.sleep(0.5)
        supernode_pids = subprocess.run(
            ["pgrep", "-P", str(join.pid)], capture_output=True, text=True
        ).stdout.split()
        group = os.getpgid(int(supernode_pids[0]))
        os.killpg(superlink.pid, signal.SIGKILL)
        killed = time.monotonic()
        status = join.wait(timeout=60)
        waited = time.monotonic() - killed
        text = node_log.read_text(errors="replace")
        assert status == EXIT_SUPERLINK_LOST, text
        assert "gave up reaching the SuperLink" in text
        # the give-up time (5 s), the last wait (at most 1 s) and stopping the rest
        assert 5 <= waited < 5 + 1 + 15, waited
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):  # Flower's SuperExec went with the SuperNode
            os.killpg(group, 0)
        print(f"\nSuperNode gave up {waited:.1f} s after the SuperLink was killed (bound 5 s)")
    finally:
        for proc in (join, superlink):
            if proc is not None and proc.poll() is None:
                proc.kill()
        try:
            os.killpg(superlink.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
