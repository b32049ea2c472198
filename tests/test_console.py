"""What `fedpers simulate` prints: its stages, warnings and the results once each; Flower's log goes to RUN_DIR/run.log."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from flwr.common.logger import ConsoleHandler, log, warn_deprecated_feature

from simulations.logs import log_to_file, run_log
from simulations.simulate import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def console():
    """What reaches the console: Flower's console handler and a root handler like the one Opacus installs
    (``logging.basicConfig``) write to the returned buffer; the ``flwr`` logger is restored afterwards."""
    logger = logging.getLogger("flwr")
    handlers, propagate = logger.handlers[:], logger.propagate
    buffer = io.StringIO()
    streams = {h: h.setStream(buffer) for h in handlers if isinstance(h, ConsoleHandler)}
    root = logging.getLogger()
    stray = logging.StreamHandler(buffer)
    root.addHandler(stray)
    yield buffer
    root.removeHandler(stray)
    for handler, stream in streams.items():
        handler.setStream(stream)
    for handler in logger.handlers[:]:
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.propagate = propagate
    for handler in handlers:
        if isinstance(handler, ConsoleHandler):
            handler.setLevel(logging.INFO)


def test_a_run_log_takes_flowers_log_and_the_terminal_gets_warnings_once(tmp_path, console):
    shown: list[str] = []
    with run_log(tmp_path / "run.log", write=shown.append):
        warn_deprecated_feature("The `run_simulation` function is deprecated")
        log(logging.INFO, "configure_fit: strategy sampled 10 clients (out of 10)")
        log(logging.DEBUG, "Node 7: masked vector ready")
        log(logging.WARNING, "round 1 training: 1 client(s) dropped during setup")
    assert shown == ["WARNING :   round 1 training: 1 client(s) dropped during setup"]
    text = (tmp_path / "run.log").read_text()
    for line in ("DEPRECATED FEATURE", "configure_fit", "masked vector ready", "dropped during"):
        assert line in text
    assert console.getvalue() == ""  # neither Flower's console nor the root handler
    # afterwards Flower's console is back
    log(logging.INFO, "after the run")
    assert "after the run" in console.getvalue()


def test_a_simulated_client_logs_to_the_run_log_and_only_errors_to_its_console(tmp_path, console):
    path = tmp_path / "run.log"
    for _ in range(2):  # every message of the client calls it: one file handler
        log_to_file(path, "client pid 1")
    log(logging.DEBUG, "Node 7: starting stage 0...")
    log(logging.WARNING, "Manually terminating ClientAppActor")
    log(logging.ERROR, "the client failed")
    shown = console.getvalue().splitlines()
    assert len(shown) == 1 and shown[0].endswith("the client failed")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all("[client pid 1]" in line for line in lines)
    assert "DEBUG [client pid 1] Node 7: starting stage 0..." in lines[0]


@pytest.mark.slow  # Ray
def test_the_terminal_of_a_tiny_simulation_shows_stages_and_results_once(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.cli",
            "simulate",
            "--config",
            str(SCENARIOS / "tiny.toml"),
            "--rounds",
            "1",
            "--run-dir",
            str(run_dir),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    # not a terminal: one line per stage, no redrawn progress bars
    assert "\r" not in out
    for stage in (
        "setup · tiny model and 10 nodes: 10 nodes connected",
        "round 1/1 · training (SecAgg+): 10 clients aggregated securely",
        "round 1/1 · evaluation (final): held-out loss of 10 users",
        "privacy accounting · each client's epsilon: largest epsilon",
        "privacy audit report: 0 problem(s)",
    ):
        assert sum(line.startswith(stage) for line in lines) == 1, (stage, out)
    # no Flower message on the terminal: no SecAgg+ DEBUG lines, no configure_fit, no deprecation notice
    for flower in ("DEBUG", "masked vector", "stage 0", "configure_fit", "DEPRECATED", "[ROUND"):
        assert flower not in out, (flower, out)
    # every line once, the results table included
    assert [line for line, n in Counter(lines).items() if n > 1] == []
    assert out.count("Held-out loss (nats per assistant token") == 1
    assert len(lines) < 40, out
    # Flower's log, the server's and the clients', is in the run directory
    log_text = (run_dir / "run.log").read_text()
    for flower in (
        "DEPRECATED FEATURE",
        "configure_fit: strategy sampled 10 clients",
        "round 1/1 · training (SecAgg+): 10 clients aggregated securely",
    ):
        assert flower in log_text, flower
    assert "DEBUG [client pid" in log_text and "masked vector ready" in log_text
