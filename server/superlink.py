"""The server side of Flower's deployment engine: the SuperLink command, the ``flwr`` connection, node
registration and runs of the fedpers app.

In flwr 1.41 the SuperLink serves its Fleet (SuperNodes), Control (``flwr`` CLI) and Runtime APIs
on one HTTPS port. fedpers runs it with TLS (the certificates of ``fedpers certs``), SuperNode
authentication (only registered node keys may connect) and without runtime dependency
installation (offline: the app's dependencies are already installed). The ``flwr`` CLI reaches it
through a named connection in ``$FLWR_HOME/config.toml`` (default ``~/.flwr``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedpers.certs import CA_CERT, SERVER_CERT, SERVER_KEY
from fedpers.processes import child_env, executable

CONNECTION = "fedpers"
OFFLINE_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


@dataclass(frozen=True)
class SuperLinkConfig:
    """Where the SuperLink listens and with which certificates (a ``fedpers certs`` directory)."""

    certs: Path
    host: str = "127.0.0.1"
    port: int = 8000
    database: Path | None = None  # None: state in memory (lost when the SuperLink stops)

    def __post_init__(self) -> None:
        for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
            if not (Path(self.certs) / name).is_file():
                raise FileNotFoundError(
                    f"{Path(self.certs) / name}: missing (create the certificates with `fedpers certs DIR`)"
                )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")


def superlink_command(config: SuperLinkConfig) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and no runtime dependency installation."""
    certs = Path(config.certs).resolve()
    command = [
        executable("flower-superlink"),
        "--ssl-ca-certfile",
        str(certs / CA_CERT),
        "--ssl-certfile",
        str(certs / SERVER_CERT),
        "--ssl-keyfile",
        str(certs / SERVER_KEY),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        config.host,
        "--port",
        str(config.port),
    ]
    if config.database is not None:
        command += ["--database", str(Path(config.database).resolve())]
    return command


def flwr_env() -> dict[str, str]:
    """The environment of Flower's server-side processes: this installation first on PATH, offline."""
    return child_env(OFFLINE_ENV)


def flwr_home() -> Path:
    from flwr.supercore.utils import get_flwr_home

    return Path(get_flwr_home())


def write_connection(address: str, root_certificates: Path, name: str = CONNECTION) -> Path:
    """Add or replace connection ``name`` in the ``flwr`` CLI's config (other entries are kept); its path."""
    import tomllib

    import tomli_w
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    from fedpers.network import check_address

    check_address(address)
    if not Path(root_certificates).is_file():
        raise FileNotFoundError(f"{root_certificates}: no such CA certificate")
    path = flwr_home() / "config.toml"
    text = path.read_text() if path.exists() else DEFAULT_FLOWER_CONFIG_TOML
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    config.setdefault("superlink", {})[name] = {
        "address": address,
        "root-certificates": str(Path(root_certificates).resolve()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def register_command(public_key: Path, connection: str = CONNECTION) -> list[str]:
    """``flwr supernode register NODE.pub CONNECTION``: let the node with this key connect."""
    if not Path(public_key).is_file():
        raise FileNotFoundError(f"{public_key}: no such public key file")
    return [
        executable("flwr"),
        "supernode",
        "register",
        str(Path(public_key).resolve()),
        connection,
    ]


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    raise ValueError(f"setting {key}: unsupported value {value!r}")


def run_config_arg(settings: Mapping[str, object]) -> str:
    """Settings as ``flwr run --run-config`` takes them: ``key=value`` pairs with TOML values."""
    return " ".join(
        f"{key.replace('_', '-')}={_toml_value(key, value)}" for key, value in settings.items()
    )


def run_command(
    app: Path, settings: Mapping[str, object], connection: str = CONNECTION, stream: bool = True
) -> list[str]:
    """``flwr run APP CONNECTION --run-config ...`` (``--stream``: follow the log until the run ends)."""
    if not (Path(app) / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"{app}: no pyproject.toml (the fedpers app directory, with [tool.flwr.app])"
        )
    command = [executable("flwr"), "run", str(Path(app).resolve()), connection]
    if settings:
        command += ["--run-config", run_config_arg(settings)]
    return command + (["--stream"] if stream else [])
