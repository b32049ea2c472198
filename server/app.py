"""The fedpers ServerApp: per-persona federated training under Flower's SecAgg+, and the run's outputs.

SecAgg+ in Flower runs through the legacy workflow API, so the app's ``main`` builds a
``LegacyContext`` and runs ``DefaultWorkflow(fit_workflow=...)``: :class:`server.secagg.SecAggPlusRound`
(or Flower's plain fit workflow when ``secure_aggregation`` is off) driving
:class:`server.strategy.PersonaTraining`. Under user-level DP the devices add the noise, inside SecAgg+
(:mod:`fedpers.privacy.user_level`); the server adds none and unmasks only noised sums.

Devices send no held-out evaluation (it would be a release no ledger covers). A simulation passes an
``evaluator``: the experimenter's own held-out evaluation after every round, run outside the
federated protocol (see :mod:`simulations.evaluator`); a deployment has none.

Without persona hiding and with SecAgg+, clients first tell their persona (in clear) and each
persona group is aggregated in its own SecAgg+ session.

After the last round, one more SecAgg+ session (task ``router``, every connected device) collects the learned
router's private statistics (:mod:`fedpers.personas.router_round`, :func:`router_round`); the router is saved in
``RUN_DIR/router`` beside the adapters. A run whose router round cannot happen or fails still finishes, says so
in its log and ``metrics.json`` (``router``), and has no ``router/``.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.app import Context
from flwr.common.logger import log
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid, ServerApp

from fedpers.adapters import GLOBAL, Adapters
from fedpers.aggregation import published_counts
from fedpers.aggregation.guards import SumBounds, check_round_sums
from fedpers.aggregation.rounds import PersonaAdapters, apply_round
from fedpers.aggregation.secure import QUANTIZATION_BITS, QuantizationPlan
from fedpers.federated import FederatedConfig
from fedpers.instructions import RoundInstructions
from fedpers.models import adapter_arrays, attach_lora, load_base_model
from fedpers.personas.centroid import has_router, load_router, router_dir, save_router
from fedpers.personas.layered import MixChoice, choose_weights, layered, mix_weight_setting
from fedpers.personas.prompt_choice import PublicDiscovery
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.user_level import NOISED_QUANTIZATION_BITS
from fedpers.progress import Progress, Stage
from fedpers.releases import ROUTER_TASK
from fedpers.rundir import PERSONA_DISCOVERY, write_json
from fedpers.warmstart import public_heldout_examples, public_update_clip, public_warm_start
from fedpers.wirelog import MANIFEST, WIRE
from server.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_dir,
    clear,
    hold_run_dir,
    manifest_state,
    mix_choices,
    optimizer_state,
    restore_manifest,
    restore_optimizer,
    resumable,
    take_resume_request,
    unfinished,
    write_checkpoint,
)
from server.outputs import (
    dp_note,
    evaluation_table,
    format_table,
    plot_heldout,
    save_adapters,
    write_metrics,
    write_run_config,
)
from server.progress import CountingGrid
from server.received import ReceivedManifest, both
from server.registry import publish
from server.rounds import RoundMode, round_mode
from server.secagg import SecAggPlusRound
from server.strategy import PersonaTraining, RouterCollection, persona_adapters, user_clip_norm


class Evaluator(Protocol):
    """``evaluator(round, adapters, trained personas, run id, final, progress)`` -> one evaluation history
    record; ``progress`` (optional) is the stage to count the evaluated users in."""

    def __call__(
        self,
        server_round: int,
        adapters: Adapters,
        trained: set[str],
        run_id: str,
        final: bool,
        progress: Stage | None = None,
    ) -> dict: ...


NO_EVALUATION = (
    "none: devices send no held-out evaluation in a deployment (it would be a release of the users' "
    "data that no ledger covers)"
)


def initial_adapters(config: FederatedConfig, arrays: dict[str, np.ndarray]) -> Adapters:
    """Global and persona adapters at round 0, all from ``arrays`` (the fresh adapter, LoRA B = 0, or the public
    warm start). Declared personas start equal; inferred personas need distinct starting points (IFCA), so
    small seeded noise is added to their B."""
    adapters = {GLOBAL: {k: v.copy() for k, v in arrays.items()}}
    for i, persona in enumerate(config.persona_names):
        start = {k: v.copy() for k, v in arrays.items()}
        if config.dataset.persona_mode == "inferred":
            rng = np.random.default_rng([config.model.seed, i])
            for k in start:
                if "lora_B" in k:
                    noise = rng.normal(0.0, 1e-2, size=start[k].shape)
                    start[k] = (start[k] + noise).astype(start[k].dtype)
        adapters[persona] = start
    return adapters


def _wait_for_nodes(
    grid: Grid, wanted: int, timeout: float = 600.0, stage: Stage | None = None
) -> int:
    deadline = time.monotonic() + timeout
    if stage is not None:
        stage.step("nodes connecting", wanted, "nodes")
    while True:
        count = len(list(grid.get_node_ids()))
        if stage is not None and count > stage.done:
            stage.advance(count - stage.done)
        if count >= wanted or time.monotonic() > deadline:
            return count
        time.sleep(1.0)


def _secure_round(
    config: FederatedConfig, bound: float, label: str, observer: Callable | None, nodes: int
) -> SecAggPlusRound:
    noised = config.privacy.user_dp  # the devices add Skellam noise on a coarser grid
    return SecAggPlusRound(
        QuantizationPlan.for_bound(
            bound,
            max(1000, nodes),
            NOISED_QUANTIZATION_BITS if noised else QUANTIZATION_BITS,
            noised,
        ),
        num_shares=config.aggregation.secagg_shares,
        reconstruction_threshold=config.aggregation.secagg_threshold,
        timeout=config.aggregation.secagg_timeout,
        retries=config.aggregation.secagg_retries,
        observer=observer,
        label=label,
    )


def published_session(record: dict, per_persona: bool) -> dict:
    """A SecAgg+ session's record as the outputs show it. With personas in clear each session aggregates one
    persona group, so its client counts (sampled, aggregated, dropped per stage) are per-persona counts, which
    dropouts can take below the minimum-clients gate: they are left out, and only the stages where clients
    dropped are kept."""
    if not per_persona:
        return record
    return {k: v for k, v in record.items() if k not in ("sampled", "aggregated", "dropped")} | {
        "dropped_at": sorted(record["dropped"])
    }


@dataclass
class ServerRun:
    """One run's server side, built before the first round (:func:`build_run`)."""

    config: FederatedConfig
    run_id: str
    nodes: int
    peft_model: object  # the base model with LoRA, to save adapters in peft format
    state: PersonaAdapters
    training: PersonaTraining
    # the strategy the workflow drives (``training``)
    strategy: Strategy
    mode: RoundMode
    sessions: list[SecAggPlusRound]
    # the server's user-level DP record per adapter (empty without it)
    ledgers: dict[str, PrivacyLedger]
    # one record per round that applied an update
    history: list[dict] = field(default_factory=list)
    # the evaluator's records (simulations only)
    evaluations: list[dict] = field(default_factory=list)
    # what the last round changed, for its progress line
    round_summary: str = ""
    # each trained persona's layered weight (fedpers.personas.layered), chosen after every applied round
    mixing: dict[str, MixChoice] = field(default_factory=dict)
    # the public held-out examples the weights are scored on (encoded once)
    public_heldout: dict | None = None
    # inferred personas chosen from the prompts: each public user's centroid (scores that persona's weight)
    public_groups: dict[str, str] | None = None
    # the rounds completed by earlier server runs (a resumed run starts after them)
    resumed_round: int = 0
    # the rounds after which a server run stopped and a later one resumed
    resumed_after: list[int] = field(default_factory=list)
    # wall time of the earlier server runs of a resumed run
    earlier_seconds: float = 0.0
    # what the router round did (metrics.json ``router``); None until it ran
    router: dict | None = None
    # update_clip_public: how the update clip was chosen (metrics.json ``update_clip_public``)
    public_clip: dict | None = None

    def published(self) -> Adapters:
        """The adapters the run evaluates and publishes: each trained persona layered on the global adapter."""
        return layered(self.state.adapters, self.mixing)


def persona_centroids(
    config: FederatedConfig, run_dir: Path, stage: Stage | None = None
) -> PublicDiscovery:
    """The public persona centroids the devices choose their persona against (inferred personas chosen from
    the prompts; :mod:`fedpers.personas.prompt_choice`), their justification written to
    ``RUN_DIR/persona-discovery.json`` and logged, and the centroid of each public user. Deterministic in the
    settings, so a resumed run sends the same ones."""
    from fedpers.personas.router_public import public_persona_discovery

    if stage is not None:
        stage.step("persona centroids from the public data")
    discovery = public_persona_discovery(config)
    write_json(run_dir / PERSONA_DISCOVERY, discovery.summary())
    log(INFO, "fedpers: inferred personas: %s", discovery.explain())
    return discovery


def build_run(
    grid: Grid,
    config: FederatedConfig,
    run_dir: Path,
    expected_nodes: int | None,
    observer: Callable | None,
    engine: str,
    stage: Stage | None = None,
    checkpoint: Checkpoint | None = None,
) -> ServerRun:
    """Load the model, wait for the nodes, and wire strategy, sessions and round mode for these settings.

    With ``checkpoint`` the run continues from it (:func:`restore_run`): same run id, adapters, optimizer
    state, records, ledgers and received-wire manifest as after its last completed round."""
    run_id = checkpoint.run_id if checkpoint is not None else uuid.uuid4().hex
    public_clip: dict | None = None
    if checkpoint is not None and config.aggregation.update_clip_public:
        # the clip the run chose on public data before its first round
        config = config.replace(update_clip=float(checkpoint.settings["update_clip"]))
        public_clip = {"update_clip": config.aggregation.update_clip, "from": "checkpoint"}
    if stage is not None:
        stage.step(f"loading {config.model.model}")
    base, _ = load_base_model(config.model.model)
    peft_model = attach_lora(base, config.lora())
    write_run_config(run_dir, config, run_id)
    nodes = _wait_for_nodes(
        grid, expected_nodes or config.server.min_nodes or config.server.min_clients, stage=stage
    )
    if checkpoint is not None:
        state = persona_adapters(config, checkpoint.adapters, checkpoint.trained)
        for name, saved in checkpoint.optimizers.items():
            if name not in state.optimizers:
                raise CheckpointError(f"optimizers.{name}: no such adapter in these settings")
            restore_optimizer(state.optimizers[name], saved, name)
        restore_ledgers(run_dir, checkpoint)
    else:
        trained = config.persona_names if config.dataset.persona_mode == "inferred" else ()
        start = adapter_arrays(peft_model)
        if config.dataset.public_steps > 0:
            if stage is not None:
                stage.step(f"public warm start ({config.dataset.public_steps} steps)")
            start = public_warm_start(config, start)
        if config.aggregation.update_clip_public:
            if stage is not None:
                stage.step("update clip from the public users' deltas")
            chosen = public_update_clip(config, start)
            config = config.replace(update_clip=chosen.clip)
            public_clip = chosen.to_dict()
            log(
                INFO,
                "fedpers: update_clip %.4g, the median of %d public users' delta norms",
                chosen.clip,
                len(chosen.norms),
            )
            write_run_config(run_dir, config, run_id)
        state = persona_adapters(config, initial_adapters(config, start), trained)
    ledgers = {}
    if config.privacy.user_dp:
        ledger_dir = run_dir / LEDGER_DIR
        ledgers = {
            name: PrivacyLedger(
                ledger_dir / f"{name}.json", f"adapter:{name}", config.privacy.delta
            )
            for name in [GLOBAL, *config.persona_names]
        }
    training = PersonaTraining(config, run_id, nodes, config.aggregation.secure_aggregation, state)
    public_groups = None
    if config.prompt_choice:
        discovery = persona_centroids(config, run_dir, stage)
        training.centroids_blob = discovery.centroids.to_bytes()
        public_groups = discovery.public_groups
    strategy: Strategy = training
    sessions: list[SecAggPlusRound] = []
    session: Callable = default_fit_workflow
    if config.aggregation.secure_aggregation:
        record = engine != "simulation" and config.outputs.record_wire
        if record and checkpoint is not None:  # the replies of the completed rounds only
            set_aside = restore_manifest(
                run_dir / WIRE / MANIFEST,
                checkpoint.manifest,
                checkpoint_dir(run_dir) / f"interrupted-round-{checkpoint.round + 1}-{MANIFEST}",
            )
            if set_aside:
                log(
                    WARNING,
                    "fedpers: %d reply record(s) of round %d, which did not complete, set aside in %s",
                    set_aside,
                    checkpoint.round + 1,
                    checkpoint_dir(run_dir),
                )
        elif record:  # this run's replies only, should the run directory be reused
            (run_dir / WIRE / MANIFEST).unlink(missing_ok=True)
        session = _secure_round(
            config,
            config.aggregation.update_clip,
            "training",
            both(observer, ReceivedManifest(run_dir, "training") if record else None),
            nodes,
        )
        sessions = [session]
    run = ServerRun(
        config,
        run_id,
        nodes,
        peft_model,
        state,
        training,
        strategy,
        round_mode(training, session),
        sessions,
        ledgers,
        public_groups=public_groups,
        public_clip=public_clip,
    )
    if checkpoint is not None:
        restore_run(run, checkpoint)
    return run


LEDGER_DIR = "user-level-dp"


def restore_ledgers(run_dir: Path, checkpoint: Checkpoint) -> None:
    """The server's user-level DP ledgers as they were at the checkpoint: a round that did not complete
    may have recorded a release the checkpoint does not hold; its adapters were never published."""
    from fedpers.atomic import write_text

    folder = run_dir / LEDGER_DIR
    if folder.is_dir():
        for path in folder.glob("*.json"):
            if path.name not in checkpoint.ledgers:
                path.unlink()
    for name, text in checkpoint.ledgers.items():
        if "/" in name or not name.endswith(".json"):
            raise CheckpointError(f"ledgers: {name!r} is not a ledger file name")
        write_text(folder / name, text)


def restore_run(run: ServerRun, checkpoint: Checkpoint) -> None:
    """The records of the completed rounds, as an uninterrupted run holds them after that round."""
    run.history = list(checkpoint.history)
    run.evaluations = list(checkpoint.evaluations)
    run.mixing = mix_choices(checkpoint.mixing)
    if len(checkpoint.sessions) != len(run.sessions):
        raise CheckpointError(
            f"sessions: the checkpoint holds {len(checkpoint.sessions)} secure-aggregation session "
            f"record(s), these settings run {len(run.sessions)}"
        )
    for session, records in zip(run.sessions, checkpoint.sessions, strict=True):
        session.history = list(records)
    run.resumed_round = checkpoint.round
    run.resumed_after = [*checkpoint.resumed_after, checkpoint.round]
    run.earlier_seconds = checkpoint.wall_seconds


def run_checkpoint(run: ServerRun, run_dir: Path, server_round: int, wall: float) -> Checkpoint:
    """The server's state after ``server_round`` (see :mod:`server.checkpoint`)."""
    ledger_dir = run_dir / LEDGER_DIR
    return Checkpoint(
        round=server_round,
        run_id=run.run_id,
        settings=run.config.to_record(),
        adapters=run.state.adapters,
        trained=sorted(run.state.trained),
        optimizers={n: optimizer_state(o) for n, o in run.state.optimizers.items()},
        history=run.history,
        evaluations=run.evaluations,
        sessions=[s.history for s in run.sessions],
        mixing={p: c.to_dict() for p, c in run.mixing.items()},
        ledgers={p.name: p.read_text() for p in sorted(ledger_dir.glob("*.json"))}
        if run.ledgers
        else {},
        manifest=manifest_state(run_dir / WIRE / MANIFEST)
        if run.sessions and run.config.outputs.record_wire
        else None,
        nodes=run.nodes,
        wall_seconds=wall,
        resumed_after=run.resumed_after,
    )


def play_round(
    run: ServerRun,
    grid: Grid,
    context: LegacyContext,
    server_round: int,
    evaluator: Evaluator | None,
    progress: Progress | None = None,
) -> None:
    """Collect the round's sums (whatever the mode), apply them, record the round, and evaluate if asked.

    Each is a stage of ``progress``: training (its exchanges counted reply by reply on a terminal), then
    the evaluation."""
    progress = progress or logged_progress()
    config = run.config
    of = f"round {server_round}/{config.server.rounds}"
    with progress.stage(f"{of} · training ({_aggregation(config)})", "training") as stage:
        _train(run, CountingGrid(grid, stage) if progress.live else grid, context, server_round)
        stage.summary = run.round_summary
    if evaluator is not None and config.outputs.evaluate:
        final = server_round >= config.server.rounds
        with progress.stage(
            f"{of} · evaluation" + (" (final)" if final else ""),
            "evaluation",
            _final_weight(final),
        ) as stage:
            record = evaluator(
                server_round,
                run.published(),
                set(run.state.trained),
                run.run_id,
                final,
                progress=stage,
            )
            run.evaluations.append(record)
            stage.summary = f"held-out loss of {sum(_users(record).values())} users"


def router_round(
    run: ServerRun,
    grid: Grid,
    context: LegacyContext,
    run_dir: Path,
    observer: Callable | None,
    record: bool,
    progress: Progress,
) -> dict:
    """The router's SecAgg+ session over every connected device, and the router it gives, saved in
    ``run_dir/router`` (:mod:`fedpers.personas.router_round`); what happened, for ``metrics.json``.

    A router saved by an earlier server run of this run (a resume) is kept; one of another run is removed. A run
    without a router round, or whose router round fails, has no ``router/`` and says so loudly."""
    from fedpers.personas.router_public import public_router_start
    from fedpers.personas.router_round import (
        NO_PUBLIC_START,
        router_from_round,
        router_layout,
        router_round_off,
        router_sum_problems,
        statistics_from_mean,
    )
    from fedpers.personas.router_stats import noise_for_epsilon, privacy_summary

    config = run.config
    if has_router(run_dir):
        try:
            mine = load_router(run_dir).info.get("run_id") == run.run_id
        except (OSError, ValueError):
            mine = False
        if mine:
            progress.note("fedpers: router of this run already saved (resumed run); kept")
            return {"status": "saved", "resumed": True}
    if router_dir(run_dir).exists():
        shutil.rmtree(router_dir(run_dir))
    off = router_round_off(config)
    if off is not None:
        progress.note(f"fedpers: no router round: {off}")
        return {"status": "off", "reason": off}

    def failed(reason: str, status: str = "failed") -> dict:
        log(
            ERROR,
            "fedpers: NO ROUTER for this run: %s; the adapters are published without router/",
            reason,
        )
        progress.note(f"fedpers: NO ROUTER: {reason}")
        return {
            "status": status,
            "reason": reason,
            "router_epsilon": config.privacy.router_epsilon,
        }

    nodes = len(list(grid.get_node_ids()))
    if nodes < 2:  # before the public start, which encodes the public prompts
        return failed(f"SecAgg+ needs at least 2 devices, {nodes} connected")
    try:
        public = public_router_start(config)
    except (
        ImportError
    ) as err:  # the server has no sentence encoder: no public map, prior or calibration
        log(WARNING, "fedpers: router without its public start (%s)", err)
        public = NO_PUBLIC_START
    if public.features.kind != "identity":
        progress.note(
            f"fedpers: router: public {public.features.kind} feature map "
            f"({public.features.dimension(0)} dimensions; {public.features.source})"
        )
    layout = router_layout(config, public.features)
    noise = noise_for_epsilon(config.privacy.router_epsilon, config.privacy.delta, layout)
    summary = {
        k: v
        for k, v in privacy_summary(noise, config.privacy.delta).items()
        if k in ("epsilon", "delta", "noise_multiplier", "dropout_assumption")
    }

    session = SecAggPlusRound(
        layout.grid(max(1000, nodes)),
        num_shares=config.aggregation.secagg_shares,
        reconstruction_threshold=config.aggregation.secagg_threshold,
        timeout=config.aggregation.secagg_timeout,
        retries=config.aggregation.secagg_retries,
        observer=both(observer, ReceivedManifest(run_dir, ROUTER_TASK) if record else None),
        label=ROUTER_TASK,
    )
    collection = RouterCollection(
        RoundInstructions(
            config,
            run.run_id,
            config.server.rounds,
            ROUTER_TASK,
            features_blob=b"" if public.features.kind == "identity" else public.features.to_bytes(),
        )
    )
    progress.note(
        f"fedpers: router round: private statistics of {nodes} devices under SecAgg+ "
        f"(epsilon {summary['epsilon']:.3g}, delta {config.privacy.delta:g} per user)"
    )
    saved_strategy = context.strategy
    context.strategy = collection
    try:
        session(grid, context)
    except Exception as err:  # the run's adapters are still written and published
        return failed(f"the router round failed: {err}")
    finally:
        context.strategy = saved_strategy
    if collection.received is None:
        return failed("the router round received no uploads")
    mean, devices, failures = collection.received
    expected = devices * session.plan.quantization_range
    if session.unmasked_weight != expected:
        return failed(
            "the router round was REJECTED: the uploads' weights add up to "
            f"{session.unmasked_weight}, not {expected} ({devices} uploads of weight one): a device changed "
            "its masked upload",
            "rejected",
        )
    try:
        stats = statistics_from_mean(mean, devices, layout)
        problems = router_sum_problems(
            stats, devices, layout, config.privacy.router_epsilon, config.privacy.delta
        )
        if problems:
            return failed(
                "the router round was REJECTED: the unmasked sum is not what "
                f"{devices} honest uploads can give: {'; '.join(problems)}",
                "rejected",
            )
        model = router_from_round(
            stats, layout, config, devices, public, run_id=run.run_id, failures=failures
        )
        save_router(run_dir, model)
    except Exception as err:
        if router_dir(run_dir).exists():
            shutil.rmtree(router_dir(run_dir))
        return failed(f"the router could not be learned from the round's sum: {err}")
    progress.note(
        f"fedpers: router saved in {router_dir(run_dir)} ({devices} devices; "
        f"{len(model.trained)} of {len(model.personas)} personas with a centroid)"
    )
    return {
        "status": "saved",
        "devices": devices,
        "failures": failures,
        "router_epsilon": config.privacy.router_epsilon,
        **summary,
    }


def _users(record: dict) -> dict[str, int]:
    """The users of an evaluation record, per persona: only the counts at or above the gate."""
    return {p: n for p, n in record.get("users", {}).items() if isinstance(n, int)}


def _final_weight(final: bool) -> float:
    """The final evaluation scores two more adapter variants (base model, user embedding): twice the work."""
    return 2.0 if final else 1.0


def _aggregation(config: FederatedConfig) -> str:
    if not config.aggregation.secure_aggregation:
        return "plain"
    return "SecAgg+" if config.aggregation.persona_hiding else "SecAgg+ per persona group"


def _train(run: ServerRun, grid: Grid, context: LegacyContext, server_round: int) -> None:
    """Collect the round's sums, apply them and record the round (``run.round_summary`` says what changed)."""
    config, started = run.config, time.perf_counter()
    round_sums = run.mode.collect(grid, context, server_round)
    if round_sums is None:
        log(WARNING, "round %s: no update was applied (see the failures above)", server_round)
        run.round_summary = "no update applied"
    elif problems := check_round_sums(
        round_sums.sums,
        round_sums.counts,
        round_sums.participants,
        sum_bounds(run, round_sums.participants),
    ):
        log(
            ERROR,
            "round %s REJECTED, nothing applied: the unmasked sums are not what %s clipped uploads can "
            "give: %s",
            server_round,
            round_sums.participants,
            "; ".join(problems),
        )
        run.history.append(
            {
                "round": server_round,
                "participants": round_sums.participants,
                "failures": round_sums.failures,
                "released": [],
                "contributors": {},
                "rejected": problems,
                "train_seconds": time.perf_counter() - started,
            }
        )
        run.round_summary = "REJECTED: the sums fail the aggregate checks; nothing applied"
    else:
        agg = apply_round(run.state, round_sums, exact_counts=not config.privacy.user_dp)
        record = {
            "round": server_round,
            "participants": round_sums.participants,
            "failures": round_sums.failures,
            "released": list(agg.released),
            "contributors": published_counts(agg.contributors, config.server.min_clients),
            "train_seconds": time.perf_counter() - started,
        }
        if config.privacy.user_dp:
            record["user_dp"] = run.training.account(run.ledgers, server_round)
        choose_layers(run)
        if run.mixing:
            record["persona_mix"] = {p: c.to_dict() for p, c in run.mixing.items()}
        run.history.append(record)
        securely = " securely" if config.aggregation.secure_aggregation else ""
        updated = ", ".join(record["released"]) or "no persona"
        run.round_summary = (
            f"{round_sums.participants} clients aggregated{securely}; updated {updated}"
        )


def sum_bounds(run: ServerRun, participants: int) -> SumBounds:
    """What bounds a round's sums (:mod:`fedpers.aggregation.guards`): the clip, the SecAgg+ grid's step, and
    under user-level DP the devices' noise — each of the ``participants`` adds a share ``v / t`` with
    ``t >= 2``, so per coordinate of a sum at most ``participants v / 2`` levels^2."""
    config = run.config
    step = run.sessions[0].plan.step if run.sessions else 0.0
    noise_std = 0.0
    if config.privacy.user_dp:
        noise = run.training.user_level_noise()
        noise_std = math.sqrt(participants * noise.variance / 2.0) / noise.levels_per_unit
    return SumBounds(config.aggregation.update_clip, run.training.count_value, step, noise_std)


def rejected_rounds(run: ServerRun) -> list[dict]:
    """The rounds whose sums failed the aggregate checks (nothing of them was applied)."""
    return [
        {"round": h["round"], "problems": h["rejected"]} for h in run.history if h.get("rejected")
    ]


def choose_layers(run: ServerRun) -> None:
    """Each trained persona's layered weight (:mod:`fedpers.personas.layered`): scored on the public held-out
    conversations under ``persona_mix = "auto"`` with public data, else fixed."""
    config = run.config
    trained = [p for p in config.persona_names if p in run.state.trained]
    env = None
    if mix_weight_setting(config.dataset.persona_mix) is None and config.dataset.public_data:
        from fedpers.models.environment import model_environment

        env = model_environment(config)
        if run.public_heldout is None:
            run.public_heldout = public_heldout_examples(config, env, run.public_groups)
    run.mixing = choose_weights(
        env, run.state.adapters, trained, config.dataset.persona_mix, run.public_heldout
    )


def mix_note(mixing: dict[str, MixChoice]) -> str:
    """One line: each persona adapter's layered weight w (published = global + w (persona - global))."""
    if not mixing:
        return ""
    weights = ", ".join(f"{p} {c.weight:g}" for p, c in mixing.items())
    return f"\npersona adapters layered on the global one, global + w (persona - global): w = {weights}"


def run_metrics(run: ServerRun, engine: str, evaluator: Evaluator | None, started: float) -> dict:
    """What ``metrics.json`` holds: settings, aggregation, every round, the evaluation and its source."""
    config, training = run.config, run.training
    evaluated = {e["round"]: e for e in run.evaluations}
    payload = {
        "run_id": run.run_id,
        "engine": engine,
        "settings": config.to_record(),
        "aggregation": {
            "secure": config.aggregation.secure_aggregation,
            "persona_hiding": config.aggregation.persona_hiding,
            "slots": list(training.slots),
            "upload_floats": training.layout.adapter_size * len(training.slots)
            + len(training.slots),
            "adapter_floats": training.layout.adapter_size,
            "update_clip": config.aggregation.update_clip,
            "sessions": [
                published_session(h, not config.aggregation.persona_hiding)
                for s in run.sessions
                for h in s.history
            ],
        },
        "rounds": [
            {
                **t,
                **{
                    f"eval_{k}": v for k, v in evaluated.get(t["round"], {}).items() if k != "round"
                },
            }
            for t in run.history
        ],
        "evaluation": evaluation_table(run.evaluations[-1]) if run.evaluations else None,
        "evaluation_source": getattr(evaluator, "source", "the caller's evaluator")
        if evaluator is not None
        else NO_EVALUATION,
        "private_randomness": private_randomness(config),
        "persona_mix": {p: c.to_dict() for p, c in run.mixing.items()},
        "rejected_rounds": rejected_rounds(run),
        "wall_seconds": run.earlier_seconds + time.perf_counter() - started,
    }
    if run.resumed_after:
        payload["resumed_after_rounds"] = list(run.resumed_after)
    if run.router is not None:
        payload["router"] = run.router
    if run.public_clip is not None:
        payload["update_clip_public"] = run.public_clip
    if config.privacy.user_dp:
        payload["user_level_dp"] = {
            **run.training.user_level_noise().details(),
            "noise_std": config.privacy.user_noise_multiplier * user_clip_norm(config),
            "delta": config.privacy.delta,
            "epsilon": {
                n: ledger.spent().epsilon if ledger.events() else 0.0
                for n, ledger in run.ledgers.items()
            },
        }
    return payload


def write_outputs(
    run: ServerRun,
    run_dir: Path,
    payload: dict,
    engine: str,
    evaluator: Evaluator | None,
    progress: Progress | None = None,
) -> None:
    """Adapters (peft format), ``metrics.json``, the plot and table, the audit (deployment) and the registry."""
    config = run.config
    save_adapters(run_dir, run.peft_model, run.published())
    write_metrics(run_dir, payload)
    if run.evaluations:
        plot_heldout(run.evaluations, run_dir / "heldout_loss.png")
    if payload["evaluation"] is not None:
        text = (
            format_table(payload["evaluation"], dp_note(config))
            + mix_note(run.mixing)
            + f"\nevaluated by {payload['evaluation_source']}"
        )
        (run_dir / "evaluation.txt").write_text(text + "\n")
        log(INFO, "\n%s", text)
    elif config.outputs.evaluate and evaluator is not None:
        log(WARNING, "no evaluation was recorded")
    if config.outputs.audit and engine != "simulation":
        _write_audit(run_dir)
    if config.outputs.registry and payload.get("rejected_rounds"):
        log(
            ERROR,
            "adapters NOT published to the registry: rounds %s were rejected by the aggregate checks "
            "(see metrics.json rejected_rounds and the audit report)",
            ", ".join(str(r["round"]) for r in payload["rejected_rounds"]),
        )
    elif config.outputs.registry:
        version = publish(run_dir, config.outputs.registry)
        (progress or logged_progress()).note(
            f"fedpers: adapters published to the registry as {version.path} (now latest)"
        )


def _info(text: str) -> None:
    log(INFO, "%s", text)


class _NoStream:
    """Where a deployment's progress writes besides its log: nowhere (the log is the record)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def logged_progress() -> Progress:
    """A deployment's progress: each stage ends with one line in the server's log, as do the notes."""
    return Progress(_NoStream(), live=False, echo=_info)


def _log_start(
    config: FederatedConfig, nodes: int, evaluator: Evaluator | None, progress: Progress
) -> None:
    mode = (
        "SecAgg+ "
        + ("with persona hiding" if config.aggregation.persona_hiding else "per persona group")
        if config.aggregation.secure_aggregation
        else "plain (the server sees each update)"
    )
    dp = (
        f"on (epsilon {config.privacy.epsilon}, delta {config.privacy.delta})"
        if config.privacy.dp
        else "off"
    )
    user_dp = (
        f"; user-level DP noise multiplier {config.privacy.user_noise_multiplier}"
        if config.privacy.user_dp
        else ""
    )
    progress.note(
        f"fedpers: {nodes} nodes, {config.server.rounds} rounds, personas: "
        f"{', '.join(config.persona_names)}; aggregation: {mode}; DP-SGD {dp}{user_dp}"
    )
    if config.privacy.noise_seed >= 0:
        log(WARNING, "fedpers: %s", private_randomness(config)["source"])
    if config.outputs.evaluate and evaluator is None:
        progress.note(f"fedpers: held-out evaluation: {NO_EVALUATION}")


def run_server(
    grid: Grid,
    context: Context,
    config: FederatedConfig,
    run_dir: Path,
    expected_nodes: int | None = None,
    observer: Callable | None = None,
    engine: str = "deployment",
    evaluator: Evaluator | None = None,
    progress: Progress | None = None,
) -> dict:
    """Run all rounds, then write adapters, metrics, the plot and the headline table into ``run_dir``.

    ``engine`` is ``"simulation"`` when ``fedpers simulate`` runs the app (it records the clients' side of the
    wire and writes the audit itself); otherwise the server records what it received and, with ``audit`` on,
    writes the audit report of what it holds before the adapters are published. ``evaluator`` (simulations
    only) evaluates the adapters after every round, outside the federated protocol.

    ``progress`` shows the run's stages (setup, then each round's training and evaluation); by default
    each stage ends with one line in the server's log.

    On the deployment engine the server checkpoints every completed round (:mod:`server.checkpoint`);
    a run asked to resume (``fedpers-server run --resume RUN_DIR``) continues after the checkpoint's
    round, and a new run never overwrites the checkpoint of an unfinished one."""
    started = time.perf_counter()
    progress = progress or logged_progress()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpointing = engine != "simulation"
    lock = hold_run_dir(run_dir) if checkpointing else None
    try:
        return _run_rounds(
            grid,
            context,
            config,
            run_dir,
            expected_nodes,
            observer,
            engine,
            evaluator,
            progress,
            started,
            checkpointing,
        )
    finally:
        if lock is not None:
            os.close(lock)


def _run_rounds(
    grid: Grid,
    context: Context,
    config: FederatedConfig,
    run_dir: Path,
    expected_nodes: int | None,
    observer: Callable | None,
    engine: str,
    evaluator: Evaluator | None,
    progress: Progress,
    started: float,
    checkpointing: bool,
) -> dict:
    """:func:`run_server` once the run directory is held."""
    checkpoint = starting_checkpoint(run_dir, config) if checkpointing else None
    done = checkpoint.round if checkpoint is not None else 0
    evaluating = evaluator is not None and config.outputs.evaluate
    rounds = config.server.rounds
    progress.plan(
        [("setup", 1.0)]
        + [
            stage
            for r in range(done + 1, rounds + 1)
            for stage in [("training", 1.0)]
            + ([("evaluation", _final_weight(r >= rounds))] if evaluating else [])
        ],
        name="rounds",
    )
    wanted = expected_nodes or config.server.min_nodes or config.server.min_clients
    with progress.stage(f"setup · {config.model.model} model and {wanted} nodes", "setup") as stage:
        run = build_run(grid, config, run_dir, expected_nodes, observer, engine, stage, checkpoint)
        stage.summary = f"{run.nodes} nodes connected"
    if checkpoint is not None:
        progress.note(
            f"fedpers: run {run.run_id[:8]} resumed after round {done} of {rounds} "
            f"(checkpoint in {checkpoint_dir(run_dir)})"
        )

    def fit_workflow(grid: Grid, ctx: LegacyContext) -> None:
        server_round = int(ctx.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        if server_round > done:  # else completed before the resume: its result is in the checkpoint
            train_round(grid, ctx, server_round)
        if server_round == rounds:  # after the last round (again, should the run resume after it)
            record = engine != "simulation" and config.outputs.record_wire
            run.router = router_round(run, grid, ctx, run_dir, observer, record, progress)

    def train_round(grid: Grid, ctx: LegacyContext, server_round: int) -> None:
        play_round(run, grid, ctx, server_round, evaluator, progress)
        if checkpointing:
            if not run.history or run.history[-1]["round"] != server_round:
                # no update applied: record the round as done only if the SuperLink still answers
                # (a round cut short by a lost SuperLink must run again after a resume)
                list(grid.get_node_ids())
            write_checkpoint(
                run_dir,
                run_checkpoint(
                    run, run_dir, server_round, run.earlier_seconds + time.perf_counter() - started
                ),
            )

    def evaluate_workflow(grid: Grid, ctx: LegacyContext) -> None:
        """Devices are never asked for an evaluation (see the module docstring)."""

    _log_start(config, run.nodes, evaluator, progress)
    context_ = LegacyContext(context, ServerConfig(num_rounds=config.server.rounds), run.strategy)
    DefaultWorkflow(fit_workflow=fit_workflow, evaluate_workflow=evaluate_workflow)(grid, context_)
    payload = run_metrics(run, engine, evaluator, started)
    write_outputs(run, run_dir, payload, engine, evaluator, progress)
    if checkpointing:  # the outputs are written: nothing is left to resume
        final = run_checkpoint(run, run_dir, rounds, payload["wall_seconds"])
        final.finished = True
        write_checkpoint(run_dir, final)
    return payload


def starting_checkpoint(run_dir: Path, config: FederatedConfig) -> Checkpoint | None:
    """The checkpoint a deployment run starts from: the one of ``run_dir`` when a resume was requested
    (refused if damaged, finished or made with other settings), else none. A new run refuses a run
    directory holding an unfinished run's checkpoint, and clears a finished one's."""
    if take_resume_request(run_dir):
        return resumable(run_dir, config.to_record())
    pending = unfinished(run_dir)
    if pending is not None:
        what = (
            pending["damaged"]
            if "damaged" in pending
            else f"run {str(pending.get('run_id'))[:8]} stopped after round {pending.get('round')}"
        )
        raise CheckpointError(
            f"{run_dir} holds the checkpoint of an unfinished run ({what}); resume it with "
            f"`fedpers-server run --resume {run_dir}` or choose another run directory"
        )
    clear(run_dir)
    return None


def private_randomness(config: FederatedConfig) -> dict:
    """Whether the devices drew DP-SGD's sampling and noise from their OS CSPRNG (``private``), or from the
    benchmark switch ``noise_seed``, which makes the run reproducible and not private."""
    if config.privacy.noise_seed < 0:
        return {"private": True, "source": "each device's OS CSPRNG, fresh for every training"}
    return {
        "private": False,
        "source": f"noise_seed = {config.privacy.noise_seed} (benchmark switch): NOT PRIVATE, whoever "
        "knows the seed can replay every batch and noise draw",
    }


def _write_audit(run_dir: Path) -> None:
    """The audit report of what the server holds; a failure is logged and never loses the run's outputs."""
    from fedpers.audit.report import write_audit

    try:
        audit = write_audit(run_dir, progress=False)
    except Exception as err:
        log(
            ERROR,
            "fedpers: the privacy audit report could not be written (%s); rebuild it with `fedpers audit %s`",
            err,
            run_dir,
        )
        return
    problems = sum(f["level"] == "problem" for f in audit["findings"])
    log(INFO, "fedpers: privacy audit report %s (%d problem(s))", run_dir / "audit.html", problems)


def config_from_context(context: Context) -> tuple[FederatedConfig, Path]:
    """Settings from the run config (``[tool.flwr.app.config]`` or ``--run-config``), defaults elsewhere."""
    run_dir = context.run_config.get("run-dir") or f"runs/{datetime.now():%Y%m%d-%H%M%S}"
    return FederatedConfig.from_record(context.run_config), Path(str(run_dir))


def make_server_app(
    config: FederatedConfig | None = None,
    run_dir: Path | None = None,
    expected_nodes: int | None = None,
    observer: Callable | None = None,
    evaluator: Evaluator | None = None,
    progress: Progress | None = None,
) -> ServerApp:
    """A ServerApp for the given settings (``fedpers simulate``), or one that reads them from the run config.

    ``observer(stage, message)`` sees every reply of a secure-aggregation session (tests)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, directory = config_from_context(context) if config is None else (config, run_dir)
        run_server(
            grid,
            context,
            cfg,
            Path(directory),
            expected_nodes,
            observer,
            engine="deployment" if config is None else "simulation",
            evaluator=evaluator,
            progress=progress,
        )

    return server_app


app = make_server_app()
