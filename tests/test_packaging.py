"""The package split: a device installs fedpers without Ray; the simulation engine is an extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from simulations.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_base_dependencies_are_client_safe_and_ray_is_an_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "flwr==1.41.0" in project["dependencies"]
    assert not [d for d in project["dependencies"] if "simulation" in d or d.startswith("ray")]
    assert project["optional-dependencies"]["simulation"][0] == "flwr[simulation]==1.41.0"
    server_only = {"matplotlib", "dp-accounting", "scipy", "tomli-w"}
    assert not [d for d in project["dependencies"] if d.split(">")[0].split("=")[0] in server_only]
    assert all(
        any(d.startswith(n) for d in project["optional-dependencies"]["server"])
        for n in server_only
    )
    assert project["scripts"]["fedpers-client"] == "clients.cli:main"
    assert project["scripts"]["fedpers-server"] == "server.cli:main"
    assert '-e ".[simulation,server,test,lint]"' in (REPO / "scripts" / "setup.sh").read_text()


def test_client_code_never_imports_ray_and_the_clientapp_module_stays_light():
    """A ``flwr-clientapp`` process starts per message: loading the app must not pull in torch."""
    code = (
        "import sys, clients.app; light = not {'torch', 'transformers', 'ray'} & set(sys.modules); "
        "import clients.cli, clients.tasks, clients.chat; "
        "print(light, 'ray' in sys.modules, sorted({'matplotlib', 'dp_accounting', 'tomli_w'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    # no server-only package on a device
    assert out.stdout.split() == ["True", "False", "[]"], out.stderr


def test_simulate_without_ray_says_how_to_get_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert main(["simulate", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert (
        "needs Flower's simulation engine (Ray)" in err
        and "pip install 'fedpers[simulation]'" in err
    )
