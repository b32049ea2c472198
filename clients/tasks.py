"""What a client computes for one message: its persona and the DP-SGD update in its slot.

The user's data and state come from the simulation's data set and plain files (:class:`UserState`),
or on a real device from its encrypted store (node config ``store``, see :mod:`clients.device`):
then the client also checks the user's consent first, trains within the consented epsilon budget
(its ledger refuses any spending past it) and keeps the adapters it received in the store.

The ``router`` task (once per run, after the last round) needs no model: the device embeds the opening user
message of each of its training conversations and uploads the router's private statistics, noised on the
device and charged to its user-level ledger first (:func:`fedpers.personas.router_round.device_router_upload`).

What a training upload carries: float arrays, zero outside the client's slot, and a count. Never the user's
text, token ids, user embedding, ledger or any held-out evaluation. Uploads are cached per round, so a secure-aggregation
retry re-sends the same vector without training again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING

import numpy as np
import torch
from flwr.common.logger import log

from clients.consent import check_participation
from clients.device import DeviceStore, node_store
from clients.persona import (
    NO_ENCODER_METHOD,
    choose_persona,
    private_persona_choice,
    private_prompt_choice,
)
from clients.state import ClientState, Upload, UserState
from fedpers.adapters import GLOBAL, Adapters
from fedpers.aggregation import clip_delta
from fedpers.aggregation.slots import SlotLayout
from fedpers.aggregation.updates import NonFiniteUpdate
from fedpers.data.schema import Conversation
from fedpers.data.split import train_heldout_split
from fedpers.federated import FederatedConfig
from fedpers.instructions import PERSONA_INDEX, RoundInstructions
from fedpers.local import LocalTrainConfig, set_trainable, train_local
from fedpers.models import load_adapter_arrays
from fedpers.models.environment import (
    ModelEnvironment,
    embedding_learning_rate,
    model_environment,
)
from fedpers.models.user_embedding import UserEmbedding
from fedpers.personas.encoder import INSTALL_HINT
from fedpers.personas.prompt_choice import PromptCentroids
from fedpers.personas.router_data import opening_turn
from fedpers.privacy import DPConfig, TrainConfig
from fedpers.privacy.accounting import BudgetExceededError
from fedpers.privacy.dp_sgd import plan_dp
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger
from fedpers.privacy.plan import DPPlan
from fedpers.privacy.user_level import DistributedNoise, user_level_entry
from fedpers.userdata import (
    UserData,
    attach_trunk,
    conversations,
    encode_user,
    user_data,
    user_ids,
)


@dataclass
class Task:
    """One message's instructions and what the client needs to answer it."""

    instructions: RoundInstructions
    env: ModelEnvironment
    data: UserData
    state: ClientState

    @property
    def config(self) -> FederatedConfig:
        return self.instructions.config

    @property
    def adapters(self) -> Adapters:
        return self.instructions.adapters


@dataclass
class RouterTask:
    """What the ``router`` task needs: the instructions, the user's state, its training conversations and the
    slot they go to (its declared persona, or the one it chose for this run; ``None``: no slot). No model."""

    instructions: RoundInstructions
    state: ClientState
    conversations: list[Conversation]
    persona: str | None


def resolve_user(config: FederatedConfig, node_config: dict) -> str:
    """The user this node serves: ``user-id`` in the node config, else the simulated ``partition-id``."""
    if "user-id" in node_config:
        return str(node_config["user-id"])
    users = user_ids(config)
    pid = int(node_config["partition-id"])
    if pid >= len(users):
        raise ValueError(f"partition {pid} has no user: the data holds {len(users)} users")
    return users[pid]


def device_user_data(
    config: FederatedConfig, device: DeviceStore, env: ModelEnvironment
) -> UserData:
    """The user's encoded data from a device's encrypted store (:class:`clients.device.DeviceStore`).

    The declared persona is the profile's, else the conversations' (``persona_mode='declared'`` only)."""
    conversations = device.conversations()
    declared = device.declared_persona() or next(
        (c.persona for c in conversations if c.persona), None
    )
    return encode_user(
        device.user_id,
        conversations,
        declared if config.dataset.persona_mode == "declared" else None,
        config.dataset.heldout_fraction,
        config.dataset.data_seed,
        config.dataset.max_length,
        env,
    )


def client_state(config: FederatedConfig, node_config: dict) -> ClientState:
    """Where this node's user keeps ledgers, plan and embedding: the device store, or the simulation's files."""
    if node_config.get("store"):
        return node_store(node_config)
    return UserState(config.outputs.state_dir, resolve_user(config, node_config))


def prepare(instructions: RoundInstructions, node_config: dict) -> Task | RouterTask:
    """Load the model, the user's data and state (simulation or device store) for ``instructions``.

    The user's examples carry their frozen trunk states (:func:`fedpers.userdata.attach_trunk`),
    computed at the user's first message and kept with the user's state: DP-SGD, the clipping
    estimate and the persona choice run only the LoRA layers; the user-embedding phase runs the full model."""
    config = instructions.config
    state = client_state(config, node_config)
    if isinstance(state, DeviceStore):
        check_participation(
            state.user_id, state.consent(), state.ledger(config.privacy.delta).spent().epsilon
        )
    if instructions.task == "router":
        return router_task(instructions, state)
    env = model_environment(config)
    if isinstance(state, DeviceStore):
        if instructions.task == "train":
            state.keep_adapters(_adapters_info(instructions), instructions.adapters)
        data = device_user_data(config, state, env)
    else:
        data = user_data(config, state.user_id, env)
    return Task(instructions, env, attach_trunk(data, env, state), state)


def train_conversations(
    config: FederatedConfig, state: ClientState
) -> tuple[list[Conversation], str | None]:
    """The user's training conversations (the split training uses) and declared persona, from the device store
    or the simulation's data set."""
    if isinstance(state, DeviceStore):
        mine = state.conversations()
        declared = state.declared_persona() or next((c.persona for c in mine if c.persona), None)
    else:
        mine = [c for c in conversations(config) if c.user_id == state.user_id]
        declared = mine[0].persona if mine else None
    train = (
        train_heldout_split(mine, config.dataset.heldout_fraction, seed=config.dataset.data_seed)[0]
        if mine
        else []
    )
    return train, declared


def router_task(instructions: RoundInstructions, state: ClientState) -> RouterTask:
    """The user's training conversations (the split training uses) and persona slot, from the device store or
    the simulation's data set; the model is not loaded."""
    config = instructions.config
    train, declared = train_conversations(config, state)
    persona = (
        declared
        if config.dataset.persona_mode == "declared"
        else state.persona_choice(instructions.run_id)
    )
    return RouterTask(instructions, state, train, persona)


def _adapters_info(instructions: RoundInstructions) -> dict:
    return {
        "run_id": instructions.run_id,
        "server_round": instructions.server_round,
        "task": instructions.task,
        "trained_personas": list(instructions.trained_personas),
        "settings": instructions.config.to_record(),
    }


def _load_embedding(env: ModelEnvironment, state: ClientState) -> None:
    """The user's embedding as last saved, or the public initial one: also when the saved one entered another
    layer (the ``embedding_layer`` setting changed), where its vectors would mean nothing."""
    stored = state.embedding()
    saved, layer = UserEmbedding.from_bytes(stored) if stored is not None else (None, 0)
    weight = saved if saved is not None and layer == env.embedding_layer else env.public_embedding
    with torch.no_grad():
        env.model.user_embedding.embedding.weight.copy_(weight)


def _save_embedding(env: ModelEnvironment, state: ClientState) -> None:
    state.save_embedding(env.model.user_embedding.to_bytes(env.embedding_layer))


def _noise_seed(
    config: FederatedConfig, user_id: str, server_round: int, purpose: str
) -> int | None:
    """``None`` (the sampler and the noise draw from the device's OS CSPRNG) unless the run sets the benchmark
    switch ``noise_seed >= 0``: then a seed derived from it, and the run is marked not private."""
    if config.privacy.noise_seed < 0:
        return None
    digest = hashlib.sha256(
        f"{config.privacy.noise_seed}/{user_id}/{server_round}/{purpose}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "little")


def assignment(task: Task):
    """The client's persona for this run: declared, cold-start global, or chosen privately (IFCA) once per run."""
    config, run_id, state = task.config, task.instructions.run_id, task.state
    personas = config.persona_names
    trained = list(task.instructions.trained_personas)
    if task.data.declared_persona is not None or not trained:
        return choose_persona(task.data.declared_persona, personas, trained, None)
    cached = state.persona_choice(run_id)
    if cached is not None:
        return choose_persona(cached, personas, trained, None)
    ledger = state.ledger(config.privacy.delta)
    details: dict = {"run_id": run_id}
    seed = _noise_seed(config, state.user_id, 0, "persona-choice")
    scores = None
    if task.instructions.centroids_blob:
        centroids = PromptCentroids.from_bytes(task.instructions.centroids_blob)
        train, _ = train_conversations(config, state)
        prompts = [turn.text for c in train if (turn := opening_turn(c)) is not None]
        scores = private_prompt_choice(
            prompts, centroids, trained, ledger, details=details, seed=seed
        )
        if scores is None:
            log(
                WARNING,
                "fedpers: user %s: no sentence encoder on this device (%s); persona chosen from the "
                "adapters' losses instead of the prompts",
                state.user_id,
                INSTALL_HINT,
            )
            details["method"] = NO_ENCODER_METHOD
    if scores is None:
        scores = private_persona_choice(
            task.env.model,
            task.adapters,
            trained,
            task.data.train,
            task.env.pad_token_id,
            ledger,
            details=details,
            seed=seed,
        )
    choice = choose_persona(None, personas, trained, scores)
    state.save_persona_choice(run_id, choice.persona)
    return choice


def _dp_plan(task: Task, ledger: PrivacyLedger) -> DPPlan:
    """Noise and clipping for this run, fixed at the user's first round so every planned round fits the
    budget: the run's epsilon, or the user's consented cap if lower."""
    config, env, data, state = task.config, task.env, task.data, task.state
    run_id = task.instructions.run_id
    plan = state.plan(run_id)
    if plan is not None:
        return plan
    # measured like DP-SGD's first phase: LoRA trainable, no user embedding
    if config.privacy.clip <= 0:
        set_trainable(env.model, lora=True, embedding=False)
        env.model.use_user_embedding = False
    run_limit = ledger.cap is None or config.privacy.epsilon <= ledger.cap
    target = config.privacy.epsilon if run_limit else ledger.cap
    limit = (
        f"the run's epsilon {config.privacy.epsilon:g}"
        if run_limit
        else f"the consented budget {ledger.cap:g}"
    )
    dp = DPConfig(
        target_epsilon=target,
        delta=config.privacy.delta,
        noise_multiplier=config.privacy.noise_multiplier or None,
        max_grad_norm=config.privacy.clip if config.privacy.clip > 0 else None,
        clip_quantile=config.privacy.clip_quantile,
    )
    try:  # the whole plan is checked before anything is spent (plan_dp)
        plan = plan_dp(
            env.model,
            data.train,
            env.pad_token_id,
            dp,
            ledger,
            config.local.batch_size,
            config.server.rounds * config.local.local_steps,
            _noise_seed(config, data.user_id, 0, "clip"),
            run_id,
        )
    except BudgetExceededError as err:
        raise BudgetExceededError(
            f"limit {limit} (spent so far {ledger.spent().epsilon:.3f}): {err}"
        ) from err
    state.save_plan(plan)
    return plan


def _charge_user_level(task: Task) -> tuple[PrivacyLedger, LedgerEntry] | None:
    """User-level DP: record this round's release in the user's user-level ledger before anything is computed
    or sent (capped: refused past the consented budget); ``None`` without user-level DP."""
    config, instructions = task.config, task.instructions
    if not config.privacy.user_dp:
        return None
    if instructions.count_value > config.aggregation.update_clip:
        raise ValueError(
            f"count value {instructions.count_value} exceeds update_clip {config.aggregation.update_clip}: "
            "the upload's L2 bound the user-level ledger is charged for would not hold"
        )
    ledger = task.state.user_level_ledger(config.privacy.delta)
    layout = SlotLayout.for_adapter(task.adapters[GLOBAL], instructions.slots)
    noise = DistributedNoise.for_settings(
        config.privacy.user_noise_multiplier,
        config.aggregation.update_clip,
        layout.upload_size,
    )
    entry = user_level_entry(noise, run_id=instructions.run_id, round=instructions.server_round)
    return ledger, ledger.record(entry)


def train_upload(task: Task) -> Upload:
    """Train the assigned persona adapter (DP-SGD) and the user embedding; the clipped delta in its slot."""
    config, instructions, env, data, state = (
        task.config,
        task.instructions,
        task.env,
        task.data,
        task.state,
    )
    user_level = _charge_user_level(task)
    choice = assignment(task)
    load_adapter_arrays(env.model.lm, task.adapters[choice.persona])
    _load_embedding(env, state)
    ledger = state.ledger(config.privacy.delta) if config.privacy.dp else None
    server_round = instructions.server_round
    dp = DPConfig(enabled=False)
    if config.privacy.dp:
        plan = _dp_plan(task, ledger)
        dp = DPConfig(
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            delta=config.privacy.delta,
            ledger_details={"run_id": instructions.run_id, "round": server_round},
        )
    local = LocalTrainConfig(
        lora=TrainConfig(
            steps=config.local.local_steps,
            batch_size=config.local.batch_size,
            learning_rate=config.local.learning_rate,
            noise_seed=_noise_seed(config, data.user_id, server_round, "dp-sgd"),
        ),
        dp=dp,
        embedding=TrainConfig(
            steps=config.local.embedding_steps,
            batch_size=config.local.batch_size,
            learning_rate=embedding_learning_rate(config, env),
            noise_seed=_noise_seed(config, data.user_id, server_round, "embedding"),
        ),
    )
    result = train_local(env.model, data.train, env.pad_token_id, local, ledger)
    _save_embedding(env, state)
    try:
        delta, factor = clip_delta(result.delta.arrays, config.aggregation.update_clip)
    except NonFiniteUpdate as err:  # diverged training: nothing leaves (counted as a dropout)
        log(ERROR, "user %s, round %s: %s", data.user_id, server_round, err)
        raise
    if factor < 1.0:
        log(
            INFO,
            "user %s: update norm %.4g clipped to %.4g",
            data.user_id,
            config.aggregation.update_clip / factor,
            config.aggregation.update_clip,
        )
    layout = SlotLayout.for_adapter(delta, instructions.slots)
    upload = layout.pack(instructions.slot_for(choice.persona), delta, instructions.count_value)
    metrics = (
        {}
        if config.aggregation.persona_hiding
        else {PERSONA_INDEX: instructions.persona_index(choice.persona)}
    )
    if user_level is not None:
        user_level[0].complete(user_level[1])
    return upload, metrics


def router_upload(task: RouterTask) -> Upload:
    """The router's private statistics (:func:`fedpers.personas.router_round.device_router_upload`): int64 levels
    on the router's grid, with this device's share of Skellam noise for SecAgg+'s threshold ``t`` in its own
    SecAgg+ state, recorded in the user-level ledger before they are computed (a cap refuses them)."""
    from fedpers.personas.features import FeatureMap
    from fedpers.personas.router_round import (
        device_router_upload,
        router_layout,
        router_round_off,
    )

    config, instructions = task.instructions.config, task.instructions
    off = router_round_off(config)
    if off is not None:
        raise ValueError(f"this run has no router round ({off}); nothing was sent")
    features = FeatureMap.from_bytes(instructions.features_blob)
    seed = _noise_seed(config, task.state.user_id, instructions.server_round, "router")
    levels = device_router_upload(
        task.conversations,
        task.persona,
        router_layout(config, features),
        config.privacy.router_epsilon,
        config.privacy.delta,
        instructions.secagg_threshold,
        task.state.user_level_ledger(config.privacy.delta),
        rng=None if seed is None else np.random.default_rng(seed),
        features=features,
        run_id=instructions.run_id,
        round=instructions.server_round,
    )
    return [levels], {}


TASKS = {"train": train_upload, "router": router_upload}


def answer(task: Task | RouterTask) -> Upload:
    """The upload of this run, round and task: computed once, re-sent as is if the round is retried."""
    instructions = task.instructions
    if instructions.task not in TASKS:
        raise ValueError(
            f"task {instructions.task!r} has no upload; expected one of {sorted(TASKS)}"
        )
    key = f"{instructions.run_id}-{instructions.server_round}-{instructions.task}"
    cached = task.state.upload(key)
    if cached is not None:
        return cached
    upload = TASKS[instructions.task](task)  # type: ignore[operator]
    task.state.save_upload(key, instructions.run_id, instructions.task, upload)
    return upload
