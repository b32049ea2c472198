"""The fedpers ClientApp (Flower Message API): private local training and held-out evaluation.

What a reply carries: the adapter delta (float arrays) and a few counts and losses. Never the
user's text, token ids, user embedding or ledger: those stay in the client's state directory.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.persona import choose_persona, private_persona_choice
from clients.runtime import ModelEnvironment, UserData, model_environment, user_data, user_ids
from clients.state import DPPlan, UserState
from fedpers.evaluation import evaluate
from fedpers.federated import FederatedConfig, unpack_adapters
from fedpers.local import LocalTrainConfig, set_trainable, train_local
from fedpers.models import UserEmbedding, load_adapter_arrays
from fedpers.privacy import DPConfig, TrainConfig
from fedpers.privacy.accounting import calibrate_noise_multiplier
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.dp_sgd import estimate_clip_norm
from fedpers.rundir import GLOBAL


def resolve_user(config: FederatedConfig, context: Context) -> str:
    """The user this node serves: ``user-id`` in the node config, else the simulated ``partition-id``."""
    node = context.node_config
    if "user-id" in node:
        return str(node["user-id"])
    users = user_ids(config)
    pid = int(node["partition-id"])
    if pid >= len(users):
        raise ValueError(f"partition {pid} has no user: the data holds {len(users)} users")
    return users[pid]


def _received(msg: Message) -> tuple[FederatedConfig, dict, dict[str, dict[str, np.ndarray]]]:
    raw = dict(msg.content["config"])
    flat = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    return FederatedConfig.from_record(raw), raw, unpack_adapters(flat)


def _setup(msg: Message, context: Context):
    config, raw, adapters = _received(msg)
    env = model_environment(config)
    data = user_data(config, resolve_user(config, context), env)
    state = UserState(config.state_dir, data.user_id)
    return config, raw, adapters, env, data, state


def _load_embedding(env: ModelEnvironment, state: UserState) -> None:
    weight = UserEmbedding.load(state.embedding_path).embedding.weight if state.embedding_path.exists() else env.public_embedding
    with torch.no_grad():
        env.model.user_embedding.embedding.weight.copy_(weight)


def _assignment(config, raw, adapters, env, data, state):
    personas = config.persona_names
    trained = [p for p in str(raw.get("trained-personas", "")).split(",") if p]
    if data.declared_persona is not None or not trained:
        return choose_persona(data.declared_persona, personas, trained, None)
    cached = state.root / f"persona-{raw['run-id']}.txt"
    if cached.exists():
        return choose_persona(cached.read_text().strip(), personas, trained, None)
    scores = private_persona_choice(env.model, adapters, trained, data.train, env.pad_token_id, state.ledger(config.delta))
    choice = choose_persona(None, personas, trained, scores)
    cached.write_text(choice.persona)
    return choice


def _dp_plan(config: FederatedConfig, raw: dict, env: ModelEnvironment, data: UserData, state: UserState,
             ledger: PrivacyLedger) -> DPPlan:
    """Noise and clipping for this run, fixed at the user's first round so every planned round fits the budget."""
    run_id = str(raw["run-id"])
    plan = state.plan(run_id)
    if plan is not None:
        return plan
    sample_rate = min(1.0, config.batch_size / len(data.train))
    clip = config.clip
    if clip <= 0:  # measured like DP-SGD's first phase: LoRA trainable, no user embedding
        set_trainable(env.model, lora=True, embedding=False)
        env.model.use_user_embedding = False
        clip = estimate_clip_norm(env.model, data.train, env.pad_token_id,
                                  DPConfig(clip_quantile=config.clip_quantile), ledger)
    steps = config.rounds * config.local_steps
    sigma = config.noise_multiplier or calibrate_noise_multiplier(config.epsilon, config.delta, sample_rate, steps, ledger.events())
    plan = DPPlan(run_id, sigma, clip, sample_rate, steps)
    state.save_plan(plan)
    return plan


def train(msg: Message, context: Context) -> Message:
    """Train the assigned persona adapter (DP-SGD) and the user embedding; reply with the delta only."""
    config, raw, adapters, env, data, state = _setup(msg, context)
    assignment = _assignment(config, raw, adapters, env, data, state)
    load_adapter_arrays(env.model.lm, adapters[assignment.persona])
    _load_embedding(env, state)
    ledger = state.ledger(config.delta) if config.dp else None
    dp = DPConfig(enabled=False)
    if config.dp:
        plan = _dp_plan(config, raw, env, data, state, ledger)
        dp = DPConfig(noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm, delta=config.delta)
    seed = config.seed * 1000 + int(raw.get("server-round", 0))
    local = LocalTrainConfig(
        lora=TrainConfig(steps=config.local_steps, batch_size=config.batch_size, learning_rate=config.learning_rate, seed=seed),
        dp=dp,
        embedding=TrainConfig(steps=config.embedding_steps, batch_size=config.batch_size, learning_rate=config.embedding_lr, seed=seed),
    )
    result = train_local(env.model, data.train, env.pad_token_id, local, ledger)
    env.model.user_embedding.save(state.embedding_path)
    persona_index = config.persona_names.index(assignment.persona) if assignment.persona != GLOBAL else -1
    losses = [x for x in result.lora.losses if x == x]
    metrics = {
        "num-examples": len(data.train),
        "persona-index": persona_index,
        "train-loss": float(np.mean(losses)) if losses else 0.0,
        "epsilon": result.lora.epsilon.epsilon if result.lora.epsilon else -1.0,
    }
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in result.delta.arrays.items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate_heldout(msg: Message, context: Context) -> Message:
    """Held-out loss sums (for token-weighted means per persona): global and persona adapters; on the
    final round also the base model and the persona adapter with the user's embedding."""
    config, raw, adapters, env, data, state = _setup(msg, context)
    assignment = _assignment(config, raw, adapters, env, data, state)
    model, pad = env.model, env.pad_token_id
    model.use_user_embedding = False
    metrics: dict[str, float | int] = {
        "num-examples": len(data.heldout),
        "persona-index": config.persona_names.index(assignment.persona) if assignment.persona != GLOBAL else -1,
    }
    variants = {"global": adapters[GLOBAL], "persona": adapters[assignment.persona]}
    if raw.get("final", False):
        variants["base"] = {k: np.zeros_like(v) for k, v in adapters[GLOBAL].items()}
    for name, arrays in variants.items():
        load_adapter_arrays(model.lm, arrays)
        result = evaluate(model, data.heldout, pad)
        metrics[f"loss-sum-{name}"], metrics["tokens"] = result.loss * result.tokens, result.tokens
    if raw.get("final", False) and state.embedding_path.exists():
        load_adapter_arrays(model.lm, adapters[assignment.persona])
        _load_embedding(env, state)
        model.use_user_embedding = True
        result = evaluate(model, data.heldout, pad)
        metrics["loss-sum-persona-embedding"] = result.loss * result.tokens
        model.use_user_embedding = False
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def make_client_app(mods: list | None = None) -> ClientApp:
    """The fedpers ClientApp, optionally with Flower mods (e.g. :func:`clients.wire.record_replies`)."""
    client_app = ClientApp(mods=mods or [])
    client_app.train()(train)
    client_app.evaluate()(evaluate_heldout)
    return client_app


app = make_client_app()
