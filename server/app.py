"""The fedpers ServerApp (Flower Message API): per-persona federated training, evaluation and outputs."""

from __future__ import annotations

import time
import uuid
from dataclasses import fields
from datetime import datetime
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedpers.federated import FederatedConfig
from fedpers.models import adapter_arrays, attach_lora, load_base_model
from fedpers.rundir import GLOBAL
from server.outputs import dp_note, evaluation_table, format_table, plot_heldout, save_adapters, write_metrics, write_run_config
from server.strategy import PersonaFedAvg, from_record, to_record

ROUND_TIMEOUT_S = 3600.0


def initial_adapters(config: FederatedConfig, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Global and persona adapters at round 0. Declared personas start equal (LoRA B = 0, i.e. the base
    model); inferred personas need distinct starting points (IFCA), so their B gets small seeded noise."""
    adapters = {GLOBAL: {k: v.copy() for k, v in arrays.items()}}
    for i, persona in enumerate(config.persona_names):
        start = {k: v.copy() for k, v in arrays.items()}
        if config.persona_mode == "inferred":
            rng = np.random.default_rng([config.seed, i])
            for k in start:
                if "lora_B" in k:
                    start[k] = rng.normal(0.0, 1e-2, size=start[k].shape).astype(start[k].dtype)
        adapters[persona] = start
    return adapters


def _wait_for_nodes(grid: Grid, wanted: int, timeout: float = 600.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = len(list(grid.get_node_ids()))
        if count >= wanted or time.monotonic() > deadline:
            return count
        time.sleep(1.0)


def run_server(grid: Grid, config: FederatedConfig, run_dir: Path, expected_nodes: int | None = None) -> dict:
    """Run all rounds, then write adapters, metrics, the plot and the headline table into ``run_dir``."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    base, _ = load_base_model(config.model)
    peft_model = attach_lora(base, config.lora())
    adapters = initial_adapters(config, adapter_arrays(peft_model))
    write_run_config(run_dir, config, run_id)
    nodes = _wait_for_nodes(grid, expected_nodes or config.min_clients)
    trained = config.persona_names if config.persona_mode == "inferred" else ()
    strategy = PersonaFedAvg(config, run_id, nodes, trained)
    log(INFO, "fedpers: %d nodes, %d rounds, personas: %s, DP %s", nodes, config.rounds,
        ", ".join(config.persona_names), f"on (epsilon {config.epsilon}, delta {config.delta})" if config.dp else "off")
    result = strategy.start(grid=grid, initial_arrays=to_record(adapters), num_rounds=config.rounds, timeout=ROUND_TIMEOUT_S)
    final_adapters = strategy.adapters if result.arrays is None else from_record(result.arrays)
    save_adapters(run_dir, peft_model, final_adapters)
    table = evaluation_table(strategy.eval_history[-1]) if strategy.eval_history else None
    epsilons = [e for r in strategy.train_history for e in r["epsilon_per_client"]]
    payload = {
        "run_id": run_id,
        "settings": config.to_record(),
        "rounds": [{**t, **{f"eval_{k}": v for k, v in e.items() if k != "round"}}
                   for t, e in zip(strategy.train_history, strategy.eval_history)],
        "evaluation": table,
        "max_epsilon": max(epsilons, default=None),
        "wall_seconds": time.perf_counter() - started,
    }
    write_metrics(run_dir, payload)
    if strategy.eval_history:
        plot_heldout(strategy.eval_history, run_dir / "heldout_loss.png")
    if table is not None:
        text = format_table(table, dp_note(config))
        (run_dir / "evaluation.txt").write_text(text + "\n")
        log(INFO, "\n%s", text)
    return payload


def config_from_context(context: Context) -> tuple[FederatedConfig, Path]:
    """Settings from the run config (``[tool.flwr.app.config]`` or ``--run-config``), defaults elsewhere."""
    known = {f.name for f in fields(FederatedConfig)}
    values = {k: v for k, v in context.run_config.items() if k.replace("-", "_") in known}
    run_dir = context.run_config.get("run-dir") or f"runs/{datetime.now():%Y%m%d-%H%M%S}"
    return FederatedConfig.from_record(values), Path(str(run_dir))


def make_server_app(config: FederatedConfig | None = None, run_dir: Path | None = None, expected_nodes: int | None = None) -> ServerApp:
    """A ServerApp for the given settings (``fedpers simulate``), or one that reads them from the run config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, directory = config_from_context(context) if config is None else (config, run_dir)
        run_server(grid, cfg, Path(directory), expected_nodes)

    return server_app


app = make_server_app()
