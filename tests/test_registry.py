"""The server's persona registry and the commands that drive Flower's deployment engine."""

from __future__ import annotations

import hashlib
import json
import tomllib

import numpy as np
import pytest
from flwr.common.config import parse_config_args
from safetensors.numpy import save_file

from server.cli import main
from server.registry import LATEST, VERSION_FILE, latest, publish, versions
from server.superlink import (
    SuperLinkConfig,
    flwr_home,
    run_command,
    run_config_arg,
    superlink_command,
    write_connection,
)


def _run_dir(path, names=("global", "leadership"), audit=False):
    for i, name in enumerate(names):
        (path / "adapters" / name).mkdir(parents=True)
        save_file(
            {"w": np.full((2, 2), float(i), dtype=np.float32)},
            str(path / "adapters" / name / "adapter_model.safetensors"),
        )
        (path / "adapters" / name / "adapter_config.json").write_text("{}")
    (path / "run.json").write_text(json.dumps({"run_id": "abc123", "personas": ["leadership"]}))
    (path / "metrics.json").write_text("{}")
    if audit:
        (path / "audit.json").write_text('{"findings": []}')
    (path / "client-state").mkdir()  # never published
    return path


def test_versions_are_numbered_immutable_and_latest_follows(tmp_path, capsys):
    registry = tmp_path / "registry"
    first = publish(_run_dir(tmp_path / "run1"), registry)
    assert first.name == "v0001" and latest(registry) == first
    record = json.loads((first.path / VERSION_FILE).read_text())
    assert record["run_id"] == "abc123" and record["adapters"] == ["global", "leadership"]
    for rel, digest in record["files"].items():
        assert hashlib.sha256((first.path / rel).read_bytes()).hexdigest() == digest
    assert not (first.path / "client-state").exists() and not (first.path / "audit.json").exists()

    second = publish(_run_dir(tmp_path / "run2", audit=True), registry)
    assert [v.name for v in versions(registry)] == ["v0001", "v0002"]
    assert latest(registry) == second and (registry / LATEST).resolve() == second.path
    assert (second.path / "audit.json").exists() and json.loads(
        (first.path / VERSION_FILE).read_text()
    ) == record
    assert not [p for p in registry.iterdir() if p.name.startswith(".")]  # no staging left behind

    assert main(["versions", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "v0001" in out and "v0002" in out and out.strip().endswith("<- latest")


def test_a_version_carries_the_runs_router(tmp_path):
    from fedpers.personas.centroid import CentroidRouterModel, has_router, load_router, save_router

    registry = tmp_path / "registry"
    without = publish(_run_dir(tmp_path / "run1"), registry)
    assert not has_router(without.path)
    assert json.loads((without.path / VERSION_FILE).read_text())["router"] is False
    run_dir = _run_dir(tmp_path / "run2")
    model = CentroidRouterModel(
        ("leadership",),
        np.ones((1, 4), np.float32) / 2,
        np.zeros((1, 2), np.float32),
        np.array([3.0]),
        info={"run_id": "abc123"},
    )
    save_router(run_dir, model)
    version = publish(run_dir, registry)
    record = json.loads((version.path / VERSION_FILE).read_text())
    assert record["router"] is True
    assert {"router/centroids.safetensors", "router/router.json"} <= set(record["files"])
    copied = load_router(version.path)
    assert copied.personas == model.personas and copied.info == {"run_id": "abc123"}
    np.testing.assert_array_equal(copied.text, model.text)
    for rel in ("router/centroids.safetensors", "router/router.json"):
        assert (version.path / rel).read_bytes() == (run_dir / rel).read_bytes()


def test_a_run_without_adapters_is_not_published(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="run.json: missing"):
        publish(run, tmp_path / "registry")
    (run / "run.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="adapters: no adapters"):
        publish(run, tmp_path / "registry")
    assert versions(tmp_path / "registry") == [] and latest(tmp_path / "registry") is None


def test_superlink_runs_with_tls_node_auth_and_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match="ca.crt: missing"):
        SuperLinkConfig(tmp_path)
    for name in ("ca.crt", "server.crt", "server.key"):
        (tmp_path / name).write_text("x")
    command = " ".join(superlink_command(SuperLinkConfig(tmp_path, "0.0.0.0", 9092)))
    assert (
        f"--ssl-ca-certfile {tmp_path}/ca.crt --ssl-certfile {tmp_path}/server.crt --ssl-keyfile {tmp_path}/server.key"
        in command
    )
    assert (
        "--enable-supernode-auth --disable-runtime-dependency-installation --host 0.0.0.0 --port 9092"
        in command
    )


def test_connection_and_run_config_as_flower_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        '[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "10.0.0.1:9093"\n'
    )
    path = write_connection("127.0.0.1:8123", tmp_path / "ca.crt")
    assert path == flwr_home() / "config.toml"
    config = tomllib.loads(path.read_text())["superlink"]
    assert config["default"] == "mine" and config["mine"] == {"address": "10.0.0.1:9093"}
    assert config["fedpers"] == {
        "address": "127.0.0.1:8123",
        "root-certificates": str(tmp_path / "ca.crt"),
    }

    settings = {
        "model": "tiny",
        "rounds": 2,
        "dp": True,
        "epsilon": 4.0,
        "run_dir": "/tmp/a b",
        "personas": "a,b",
    }
    assert parse_config_args([run_config_arg(settings)]) == {
        k.replace("_", "-"): v for k, v in settings.items()
    }
    with pytest.raises(FileNotFoundError, match="no pyproject.toml"):
        run_command(tmp_path, settings)


def test_run_command_takes_settings_from_file_and_flags(tmp_path, capsys):
    config = tmp_path / "s.toml"
    config.write_text('rounds = 4\nmodel = "tiny"\n')
    argv = [
        "run",
        "--config",
        str(config),
        "--run-config",
        "rounds=2 min-nodes=3",
        "--run-dir",
        str(tmp_path / "r"),
        "--print-command",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        f'rounds=2 model="tiny" min-nodes=3 run-dir="{tmp_path / "r"}" registry=' in out
        and out.strip().endswith("--stream")
    )
    assert main(["run", "--run-config", "roundz=2", "--print-command"]) == 2
    assert "unknown setting 'roundz'" in capsys.readouterr().err
    assert main(["run", "--run-config", "rounds=two", "--print-command"]) == 2
    assert "--run-config 'rounds=two'" in capsys.readouterr().err
