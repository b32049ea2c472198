"""The fedpers ClientApp: private local training and held-out evaluation, in Flower's legacy record layout.

Every aggregation is a ``TRAIN`` message (SecAgg+ handles only those), in the ``fitins``/``fitres``
layout that ``secaggplus_mod`` and ``fixedclipping_mod`` read. The config's ``task`` says what to
upload: ``train`` (the clipped adapter delta in the slot of the client's persona) or ``evaluate``
(held-out loss sums in the row of its persona); a ``QUERY`` with task ``persona`` asks for the
persona in clear (only when persona hiding is off).

What an upload carries: float arrays, zero outside the client's slot, and a count. Never the user's
text, token ids, user embedding or ledger: those stay in the client's state directory. Uploads are
cached per round, so a secure-aggregation retry re-sends the same vector without training again.
"""

from __future__ import annotations

import hashlib
import json
from logging import INFO

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.logger import log
from safetensors.numpy import load_file, save_file

from clients.persona import choose_persona, private_persona_choice
from clients.secagg import CLIENT_MODS
from clients.runtime import ModelEnvironment, UserData, model_environment, user_data, user_ids
from clients.state import DPPlan, UserState
from fedpers.aggregation import clip_delta
from fedpers.aggregation.slots import SlotLayout, pack_stats
from fedpers.atomic import write_json
from fedpers.evaluation import evaluate
from fedpers.federated import FederatedConfig, adapters_from_bytes
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
    if msg.metadata.message_type == MessageType.QUERY:
        raw = dict(msg.content["config"])
    else:
        raw = dict(compat.recorddict_to_fitins(msg.content, keep_input=True).config)
    return FederatedConfig.from_record(raw), raw, adapters_from_bytes(raw["adapters"])


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


def _noise_seed(config: FederatedConfig, user_id: str, server_round: int, purpose: str) -> int | None:
    """Fresh OS entropy unless the run seeds DP noise (``noise_seed >= 0``, for reproducible comparisons)."""
    if config.noise_seed < 0:
        return None
    digest = hashlib.sha256(f"{config.noise_seed}/{user_id}/{server_round}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


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


def _persona_index(config: FederatedConfig, persona: str) -> int:
    return config.persona_names.index(persona) if persona != GLOBAL else -1


def _slot(raw: dict, persona: str) -> str:
    slots = str(raw["slots"]).split(",")
    return persona if persona in slots else slots[0] if len(slots) == 1 else GLOBAL


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
                                  DPConfig(clip_quantile=config.clip_quantile), ledger,
                                  _noise_seed(config, data.user_id, 0, "clip"))
    steps = config.rounds * config.local_steps
    sigma = config.noise_multiplier or calibrate_noise_multiplier(config.epsilon, config.delta, sample_rate, steps, ledger.events())
    plan = DPPlan(run_id, sigma, clip, sample_rate, steps)
    state.save_plan(plan)
    return plan


def _train_upload(config, raw, adapters, env, data, state) -> tuple[list[np.ndarray], dict]:
    """Train the assigned persona adapter (DP-SGD) and the user embedding; the clipped delta in its slot."""
    assignment = _assignment(config, raw, adapters, env, data, state)
    load_adapter_arrays(env.model.lm, adapters[assignment.persona])
    _load_embedding(env, state)
    ledger = state.ledger(config.delta) if config.dp else None
    server_round = int(raw.get("server-round", 0))
    dp = DPConfig(enabled=False)
    if config.dp:
        plan = _dp_plan(config, raw, env, data, state, ledger)
        dp = DPConfig(noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm, delta=config.delta)
    seed = config.seed * 1000 + server_round
    local = LocalTrainConfig(
        lora=TrainConfig(steps=config.local_steps, batch_size=config.batch_size, learning_rate=config.learning_rate, seed=seed,
                         noise_seed=_noise_seed(config, data.user_id, server_round, "dp-sgd")),
        dp=dp,
        embedding=TrainConfig(steps=config.embedding_steps, batch_size=config.batch_size, learning_rate=config.embedding_lr, seed=seed),
    )
    result = train_local(env.model, data.train, env.pad_token_id, local, ledger)
    env.model.user_embedding.save(state.embedding_path)
    delta, factor = clip_delta(result.delta.arrays, config.update_clip)
    if factor < 1.0:
        log(INFO, "user %s: update norm %.4g clipped to %.4g", data.user_id, config.update_clip / factor, config.update_clip)
    layout = SlotLayout.for_adapter(delta, str(raw["slots"]).split(","))
    upload = layout.pack(_slot(raw, assignment.persona), delta, float(raw["count-value"]))
    metrics = {} if config.persona_hiding else {"persona-index": _persona_index(config, assignment.persona)}
    return upload, metrics


def _evaluate_upload(config, raw, adapters, env, data, state) -> tuple[list[np.ndarray], dict]:
    """Held-out loss sums of the global and persona adapters (final round: also the base model and the
    persona adapter with the user's embedding), in the row of the client's persona."""
    assignment = _assignment(config, raw, adapters, env, data, state)
    model, pad = env.model, env.pad_token_id
    model.use_user_embedding = False
    values: dict[str, float] = {"count": 1.0}
    variants = {"global": adapters[GLOBAL], "persona": adapters[assignment.persona]}
    if raw.get("final", False):
        variants["base"] = {k: np.zeros_like(v) for k, v in adapters[GLOBAL].items()}
    for name, arrays in variants.items():
        load_adapter_arrays(model.lm, arrays)
        result = evaluate(model, data.heldout, pad)
        values[f"loss-sum-{name}"], values["tokens"] = result.loss * result.tokens, float(result.tokens)
    if raw.get("final", False) and state.embedding_path.exists():
        load_adapter_arrays(model.lm, adapters[assignment.persona])
        _load_embedding(env, state)
        model.use_user_embedding = True
        result = evaluate(model, data.heldout, pad)
        values["loss-sum-persona-embedding"] = result.loss * result.tokens
        model.use_user_embedding = False
    slots = str(raw["slots"]).split(",")
    metrics = {} if config.persona_hiding else {"persona-index": _persona_index(config, assignment.persona)}
    return pack_stats(slots, _slot(raw, assignment.persona), values), metrics


def _cached(state: UserState, raw: dict, compute) -> tuple[list[np.ndarray], dict]:
    """The upload of this run, round and task: computed once, re-sent as is if the round is retried."""
    folder = state.root / "uploads"
    key = f"{raw['run-id']}-{int(raw.get('server-round', 0))}-{raw['task']}"
    arrays_path, metrics_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if arrays_path.exists() and metrics_path.exists():
        stored = load_file(arrays_path)
        return [stored[k] for k in sorted(stored)], json.loads(metrics_path.read_text())
    arrays, metrics = compute()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{raw['run-id']}-*-{raw['task']}.*"):
        old.unlink()
    save_file({f"{i:05d}": np.ascontiguousarray(a) for i, a in enumerate(arrays)}, arrays_path)
    write_json(metrics_path, metrics)
    return arrays, metrics


def train(msg: Message, context: Context) -> Message:
    """Reply to a ``TRAIN`` message with this client's upload for the task in its config."""
    config, raw, adapters, env, data, state = _setup(msg, context)
    tasks = {"train": _train_upload, "evaluate": _evaluate_upload}
    if raw.get("task") not in tasks:
        raise ValueError(f"unknown task {raw.get('task')!r}; expected one of {sorted(tasks)}")
    arrays, metrics = _cached(state, raw, lambda: tasks[raw["task"]](config, raw, adapters, env, data, state))
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def persona(msg: Message, context: Context) -> Message:
    """The client's persona index, in clear (aggregation without persona hiding)."""
    config, raw, adapters, env, data, state = _setup(msg, context)
    if config.persona_hiding:
        raise PermissionError("this run hides personas: the persona is not sent in clear")
    choice = _assignment(config, raw, adapters, env, data, state)
    return Message(RecordDict({"metrics": MetricRecord({"persona-index": _persona_index(config, choice.persona)})}), reply_to=msg)


def make_client_app(mods: list | None = None, outer_mods: list | None = None) -> ClientApp:
    """The fedpers ClientApp: ``[*outer_mods, secaggplus_mod, fixedclipping_mod, *mods]``.

    ``outer_mods`` see what leaves the device (e.g. :func:`clients.wire.record_replies`); ``mods``
    see the plain upload before it is clipped and masked."""
    client_app = ClientApp(mods=[*(outer_mods or []), *CLIENT_MODS, *(mods or [])])
    client_app.train()(train)
    client_app.query()(persona)
    return client_app


app = make_client_app()
