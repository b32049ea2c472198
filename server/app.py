"""The fedpers ServerApp: per-persona federated training under Flower's SecAgg+, and the run's outputs.

SecAgg+ in Flower runs through the legacy workflow API, so the app's ``main`` builds a
``LegacyContext`` and runs ``DefaultWorkflow(fit_workflow=...)``: :class:`server.secagg.SecAggPlusRound`
(or Flower's plain fit workflow when ``secure_aggregation`` is off) driving
:class:`server.strategy.PersonaTraining`, wrapped in Flower's
``DifferentialPrivacyClientSideFixedClipping`` under user-level DP.

Devices send no held-out evaluation (it would be a release no ledger covers). A simulation passes an
``evaluator``: the experimenter's own held-out evaluation after every round, run outside the
federated protocol (see :mod:`simulations.evaluator`); a deployment has none.

Without persona hiding and with SecAgg+, clients first tell their persona (in clear) and each
persona group is aggregated in its own SecAgg+ session.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from logging import ERROR, INFO, WARNING
from pathlib import Path

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.logger import log
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid, ServerApp

from fedpers.aggregation.secure import QuantizationPlan
from fedpers.wirelog import MANIFEST, WIRE
from fedpers.federated import FederatedConfig
from fedpers.models import adapter_arrays, attach_lora, load_base_model
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.rundir import GLOBAL
from server.outputs import dp_note, evaluation_table, format_table, plot_heldout, save_adapters, write_metrics, write_run_config
from server.received import ReceivedManifest, both
from server.registry import publish
from server.secagg import SecAggPlusRound
from server.strategy import PersonaTraining, user_clip_norm

Adapters = dict[str, dict[str, np.ndarray]]
Evaluator = Callable[[int, Adapters, set[str], str, bool], dict]
"""``evaluator(round, adapters, trained personas, run id, final)`` -> one evaluation history record."""
NO_EVALUATION = ("none: devices send no held-out evaluation in a deployment (it would be a release of the users' "
                 "data that no ledger covers)")



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


def _secure_round(config: FederatedConfig, bound: float, label: str, observer: Callable | None, nodes: int) -> SecAggPlusRound:
    return SecAggPlusRound(QuantizationPlan.for_bound(bound, max(1000, nodes)), num_shares=config.secagg_shares,
                           reconstruction_threshold=config.secagg_threshold, timeout=config.secagg_timeout,
                           retries=config.secagg_retries, observer=observer, label=label)


class PersonaGroups:
    """Personas in clear: ask each client its persona, then aggregate each persona group on its own."""

    def __init__(self, strategy, persona_of: Callable[[int], str], session: Callable, after_session: Callable,
                 finish: Callable) -> None:
        self.strategy, self.persona_of, self.session = strategy, persona_of, session
        self.after_session, self.finish = after_session, finish
        self.personas: dict[int, str] = {}

    def _ask(self, grid: Grid, context: LegacyContext, server_round: int) -> None:
        unknown = [n for n in grid.get_node_ids() if n not in self.personas]
        if not unknown:
            return
        content = RecordDict({"config": ConfigRecord(self.strategy.instructions(server_round) | {"task": "persona"})})
        replies = grid.send_and_receive([Message(content=content, dst_node_id=n, message_type=MessageType.QUERY,
                                                 group_id=str(server_round)) for n in unknown], timeout=self.strategy.config.secagg_timeout)
        for reply in replies:
            if not reply.has_error():
                self.personas[reply.metadata.src_node_id] = self.persona_of(int(reply.content["metrics"]["persona-index"]))

    def __call__(self, grid: Grid, context: LegacyContext) -> None:
        server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        self.strategy.start_round()
        self._ask(grid, context, server_round)
        count = self.strategy.num_sampled
        sampled = {c.node_id for c in context.client_manager.sample(count, count)}
        groups: dict[str, set[int]] = {}
        for node, persona in self.personas.items():
            if node in sampled:
                groups.setdefault(persona, set()).add(node)
        participants = 0
        smallest = max(2, self.strategy.config.min_clients)
        for persona, nodes in sorted(groups.items()):
            if len(nodes) < smallest:  # the log says no count below the gate (fedpers.aggregation.published_count)
                log(INFO, "round %d: %s has fewer than %d clients; not aggregated", server_round, persona, smallest)
                continue
            self.strategy.group = (persona, nodes)
            try:
                self.session(grid, context)
                self.after_session(context)
            finally:
                self.strategy.group = None
            participants += len(nodes)
        self.finish(server_round, participants)


def published_session(record: dict, per_persona: bool) -> dict:
    """A SecAgg+ session's record as the outputs show it. With personas in clear each session aggregates one
    persona group, so its client counts (sampled, aggregated, dropped per stage) are per-persona counts, which
    dropouts can take below the minimum-clients gate: they are left out, and only the stages where clients
    dropped are kept."""
    if not per_persona:
        return record
    return {k: v for k, v in record.items() if k not in ("sampled", "aggregated", "dropped")} | {"dropped_at": sorted(record["dropped"])}


def _params(context: LegacyContext):
    return compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)


def run_server(grid: Grid, context: Context, config: FederatedConfig, run_dir: Path, expected_nodes: int | None = None,
               observer: Callable | None = None, engine: str = "deployment", evaluator: Evaluator | None = None) -> dict:
    """Run all rounds, then write adapters, metrics, the plot and the headline table into ``run_dir``.

    ``engine`` is ``"simulation"`` when ``fedpers simulate`` runs the app (it records the clients' side of the
    wire and writes the audit itself); otherwise the server records what it received and, with ``audit`` on,
    writes the audit report of what it holds before the adapters are published. ``evaluator`` (simulations
    only) evaluates the adapters after every round, outside the federated protocol."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    base, _ = load_base_model(config.model)
    peft_model = attach_lora(base, config.lora())
    adapters = initial_adapters(config, adapter_arrays(peft_model))
    write_run_config(run_dir, config, run_id)
    nodes = _wait_for_nodes(grid, expected_nodes or config.min_nodes or config.min_clients)
    trained = config.persona_names if config.persona_mode == "inferred" else ()
    ledgers = {}
    if config.user_dp:
        ledger_dir = run_dir / "user-level-dp"
        ledgers = {name: PrivacyLedger(ledger_dir / f"{name}.json", f"adapter:{name}", config.delta)
                   for name in [GLOBAL, *config.persona_names]}
    training = PersonaTraining(config, run_id, nodes, config.secure_aggregation, adapters, trained, ledgers)
    history: list[dict] = []
    strategy = training
    if config.user_dp:
        strategy = DifferentialPrivacyClientSideFixedClipping(training, config.user_noise_multiplier,
                                                              user_clip_norm(config), training.num_sampled)
    train_context = LegacyContext(context, ServerConfig(num_rounds=config.rounds), strategy)

    sessions: list[SecAggPlusRound] = []
    if config.secure_aggregation:
        record = engine != "simulation" and config.record_wire
        if record:  # this run's replies only, should the run directory be reused
            (run_dir / WIRE / MANIFEST).unlink(missing_ok=True)
        train_session = _secure_round(config, config.update_clip, "training",
                                      both(observer, ReceivedManifest(run_dir, "training") if record else None), nodes)
        sessions = [train_session]
    else:
        train_session = default_fit_workflow

    def absorb(ctx: LegacyContext) -> None:
        training.absorb(_params(ctx))

    if config.secure_aggregation and not config.persona_hiding:
        train_flow = PersonaGroups(training, training.persona, train_session, absorb,
                                   lambda r, n: training.finish_groups(r, n, 0))
    else:
        train_flow = train_session

    def fit_workflow(grid: Grid, ctx: LegacyContext) -> None:
        server_round = int(ctx.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        before = len(training.history)
        train_flow(grid, ctx)
        absorb(ctx)
        if len(training.history) == before:
            log(WARNING, "round %s: no update was applied (see the failures above)", server_round)
        if evaluator is not None and config.evaluate:
            history.append(evaluator(server_round, training.adapters, set(training.trained), run_id,
                                     server_round >= config.rounds))

    def evaluate_workflow(grid: Grid, ctx: LegacyContext) -> None:
        """Devices are never asked for an evaluation (see the module docstring)."""

    mode = ("SecAgg+ " + ("with persona hiding" if config.persona_hiding else "per persona group")
            if config.secure_aggregation else "plain (the server sees each update)")
    log(INFO, "fedpers: %d nodes, %d rounds, personas: %s; aggregation: %s; DP-SGD %s%s", nodes, config.rounds,
        ", ".join(config.persona_names), mode, f"on (epsilon {config.epsilon}, delta {config.delta})" if config.dp else "off",
        f"; user-level DP noise multiplier {config.user_noise_multiplier}" if config.user_dp else "")
    if config.noise_seed >= 0:
        log(WARNING, "fedpers: %s", private_randomness(config)["source"])
    if config.evaluate and evaluator is None:
        log(INFO, "fedpers: held-out evaluation: %s", NO_EVALUATION)
    DefaultWorkflow(fit_workflow=fit_workflow, evaluate_workflow=evaluate_workflow)(grid, train_context)

    save_adapters(run_dir, peft_model, training.adapters)
    table = evaluation_table(history[-1]) if history else None
    evaluated = {e["round"]: e for e in history}
    source = getattr(evaluator, "source", "the caller's evaluator") if evaluator is not None else NO_EVALUATION
    payload = {
        "run_id": run_id,
        "engine": engine,
        "settings": config.to_record(),
        "aggregation": {"secure": config.secure_aggregation, "persona_hiding": config.persona_hiding,
                        "slots": list(training.slots), "upload_floats": training.layout.adapter_size * len(training.slots) + len(training.slots),
                        "adapter_floats": training.layout.adapter_size, "update_clip": config.update_clip,
                        "sessions": [published_session(h, not config.persona_hiding) for s in sessions for h in s.history]},
        "rounds": [{**t, **{f"eval_{k}": v for k, v in evaluated.get(t["round"], {}).items() if k != "round"}}
                   for t in training.history],
        "evaluation": table,
        "evaluation_source": source,
        "private_randomness": private_randomness(config),
        "wall_seconds": time.perf_counter() - started,
    }
    if config.user_dp:
        payload["user_level_dp"] = {"noise_multiplier": config.user_noise_multiplier, "clip": user_clip_norm(config),
                                    "delta": config.delta, "epsilon": {n: l.spent().epsilon if l.events() else 0.0 for n, l in ledgers.items()}}
    write_metrics(run_dir, payload)
    if history:
        plot_heldout(history, run_dir / "heldout_loss.png")
    if table is not None:
        text = format_table(table, dp_note(config)) + f"\nevaluated by {source}"
        (run_dir / "evaluation.txt").write_text(text + "\n")
        log(INFO, "\n%s", text)
    elif config.evaluate and evaluator is not None:
        log(WARNING, "no evaluation was recorded")
    if config.audit and engine != "simulation":
        _write_audit(run_dir)
    if config.registry:
        version = publish(run_dir, config.registry)
        log(INFO, "fedpers: adapters published to the registry as %s (now latest)", version.path)
    return payload


def private_randomness(config: FederatedConfig) -> dict:
    """Whether the devices drew DP-SGD's sampling and noise from their OS CSPRNG (``private``), or from the
    benchmark switch ``noise_seed``, which makes the run reproducible and not private."""
    if config.noise_seed < 0:
        return {"private": True, "source": "each device's OS CSPRNG, fresh for every training"}
    return {"private": False, "source": f"noise_seed = {config.noise_seed} (benchmark switch): NOT PRIVATE, whoever "
            "knows the seed can replay every batch and noise draw"}


def _write_audit(run_dir: Path) -> None:
    """The audit report of what the server holds; a failure is logged and never loses the run's outputs."""
    from fedpers.audit.report import write_audit

    try:
        audit = write_audit(run_dir, progress=False)
    except Exception as err:  # noqa: BLE001 - the adapters and metrics are written; the audit can be rebuilt
        log(ERROR, "fedpers: the privacy audit report could not be written (%s); rebuild it with `fedpers audit %s`", err, run_dir)
        return
    problems = sum(f["level"] == "problem" for f in audit["findings"])
    log(INFO, "fedpers: privacy audit report %s (%d problem(s))", run_dir / "audit.html", problems)


def config_from_context(context: Context) -> tuple[FederatedConfig, Path]:
    """Settings from the run config (``[tool.flwr.app.config]`` or ``--run-config``), defaults elsewhere."""
    known = {f.name for f in fields(FederatedConfig)}
    values = {k: v for k, v in context.run_config.items() if k.replace("-", "_") in known}
    run_dir = context.run_config.get("run-dir") or f"runs/{datetime.now():%Y%m%d-%H%M%S}"
    return FederatedConfig.from_record(values), Path(str(run_dir))


def make_server_app(config: FederatedConfig | None = None, run_dir: Path | None = None, expected_nodes: int | None = None,
                    observer: Callable | None = None, evaluator: Evaluator | None = None) -> ServerApp:
    """A ServerApp for the given settings (``fedpers simulate``), or one that reads them from the run config.

    ``observer(stage, message)`` sees every reply of a secure-aggregation session (tests)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, directory = config_from_context(context) if config is None else (config, run_dir)
        run_server(grid, context, cfg, Path(directory), expected_nodes, observer,
                   engine="deployment" if config is None else "simulation", evaluator=evaluator)

    return server_app


app = make_server_app()
