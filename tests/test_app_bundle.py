"""The Flower app bundle (FAB) that `flwr run` sends to every SuperNode holds code and config only.

The bundle is built in-process with Flower's own build function from a copy of the app folder (the
packages the ServerApp and ClientApp import, ``pyproject.toml`` and ``.gitignore``) in which data files, run
outputs, a client store, keys, a virtual environment and caches have been planted.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from clients.cli import main as client_main

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fedpers", "clients", "server")
"""The packages the ServerApp (``server.app:app``) and the ClientApp (``clients.app:app``) import."""

PLANTED = (
    "desk.jsonl",
    "data.json",
    "settings.toml",
    "notes.yaml",
    "runs/x/metrics.json",
    "runs/x/run.json",
    "runs/registry/leadership/adapter.safetensors",
    "node.key",
    "node.pub",
    "keys/ca.crt",
    "keys/server.pem",
    "fedpers/data/desk.jsonl",
    "fedpers/data/export.json",
    "clients/notes.json",
    "server/registry.json",
    "server/local.toml",
    "fedpers/__pycache__/cli.cpython-311.pyc",
    ".venv/lib/python3.11/site-packages/evil/__init__.py",
    ".hypothesis/examples/x.json",
    ".pytest_cache/v/cache/lastfailed.json",
    "tests/conftest.py",
    "simulations/scenarios/mine.toml",
)
"""Files a working copy of the app folder can hold that must never travel in the bundle."""


NOT_SENT = ("fedpers/data/texts/",)
"""Package data that no device needs and Flower cannot bundle (a gzip file): the tinyshakespeare text, read
by simulations and by a ServerApp through ``$FEDPERS_SHAKESPEARE``."""


def _is_code(path: Path) -> bool:
    """Python source that Flower's built-in rules keep (they drop ``test_*.py`` and ``*_test.py``)."""
    return path.suffix == ".py" and not (
        path.name.startswith("test_") or path.stem.endswith("_test")
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A copy of the app folder with data, outputs, a client store, keys and caches planted in it."""
    root = tmp_path / "fedpers-app"
    root.mkdir()
    for name in ("pyproject.toml", ".gitignore", "README.md"):
        shutil.copy2(REPO / name, root / name)
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for rel in PLANTED:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"user_id": "u1"}\n')
    store = ["--store", str(root / "store"), "--key-file", str(root / "store.key")]
    assert client_main([*store, "init", "--user-id", "u1"]) == 0  # store.json, *.enc, the key
    return root


def _names(fab: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        return set(archive.namelist())


def test_the_bundle_holds_code_and_config_only(app: Path) -> None:
    names = _names(build_fab_from_disk(app))
    code = {
        path.relative_to(app).as_posix()
        for package in PACKAGES
        for path in (app / package).rglob("*.py")
        if _is_code(path) and path.relative_to(app).as_posix() not in PLANTED
    }
    phrases = {
        path.relative_to(app).as_posix()
        for path in (app / "fedpers" / "data" / "phrases").glob("*.json")
    }
    assert phrases and {"clients/app.py", "server/app.py", "fedpers/federated.py"} <= code
    planted = set(PLANTED) | {"store.key", "store/store.json", "README.md"}
    assert not names & planted, f"shipped: {sorted(names & planted)}"
    assert not [n for n in names if n.endswith((".jsonl", ".key", ".enc", ".pem", ".crt", ".pyc"))]
    assert names == code | phrases | {"pyproject.toml", ".info/CONTENT"}


def test_the_bundled_pyproject_still_names_the_apps(app: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))) as archive:
        config = tomllib.loads(archive.read("pyproject.toml").decode())
        names = set(archive.namelist())
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "server.app:app", "clientapp": "clients.app:app"}
    for target in components.values():
        assert target.split(":")[0].replace(".", "/") + ".py" in names


def test_every_file_the_project_keeps_in_the_app_packages_is_bundled(app: Path) -> None:
    """A resource added to the packages (and to git) must be added to ``fab-include`` too."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", *PACKAGES],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    tracked = {
        rel
        for rel in listed
        if (_is_code(Path(rel)) or Path(rel).suffix != ".py") and not rel.startswith(NOT_SENT)
    }
    missing = tracked - _names(build_fab_from_disk(app))
    assert not missing, f"tracked but not bundled (add them to fab-include): {sorted(missing)}"
