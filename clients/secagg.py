"""The client mod for secure aggregation: Flower's SecAgg+ with cryptographic masks and on-device noise.

:func:`secaggplus_mod` is Flower's ``secaggplus_mod`` (same stages, same records, Flower's own key
agreement, Shamir sharing and share encryption) with one change: masks come from
:func:`fedpers.aggregation.secure.keystream_masks` (ChaCha20 keyed by the whole shared secret)
instead of ``pseudo_rand_gen`` (``RandomState`` seeded with a 32-bit fold of it). The server side
is :class:`server.secagg.SecAggPlusRound`; both must use the same mask generator.

Under user-level DP the device adds its share of Skellam noise to the quantized upload before masking
(:func:`_user_level_noise`; the upload is already clipped by the training task).

The router's upload (task ``router``) arrives already quantized on the router's grid and noised, by the task
(:mod:`fedpers.personas.router_round`): the mod first hands the task its reconstruction threshold ``t``
(:func:`_tell_threshold`; the noise share is ``1/t`` of the noise), then checks that the server's SecAgg+ grid
is the router's and masks the integer levels as they are (:func:`_router_levels`). Messages without a SecAgg+
record (plain aggregation) pass straight through, so one ClientApp serves both modes.
"""

from __future__ import annotations

import hashlib
import os
from logging import DEBUG, WARNING
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.app.typing import ConfigRecordValues
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _setup,
    _share_keys,
    _unmask,
    check_configs,
    check_stage,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Parameters, ndarray_to_bytes, parameters_to_ndarrays
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore import log
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedpers.aggregation.secure import keystream_masks
from fedpers.instructions import SECAGG_THRESHOLD, RoundInstructions, instructed_task
from fedpers.releases import ROUTER_TASK


def secaggplus_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ client protocol with ChaCha20 masks (see the module docstring)."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or RECORD_KEY_CONFIGS not in msg.content.config_records
    ):
        return call_next(msg, ctxt)
    if RECORD_KEY_STATE not in ctxt.state.config_records:
        ctxt.state.config_records[RECORD_KEY_STATE] = ConfigRecord({})
    state = SecAggPlusState(**ctxt.state.config_records[RECORD_KEY_STATE])
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    check_stage(state.current_stage, configs)
    state.current_stage = cast(str, configs.pop(Key.STAGE))
    check_configs(state.current_stage, configs)

    out_content = RecordDict()
    if state.current_stage == Stage.SETUP:
        state.nid = msg.metadata.dst_node_id
        res = _setup(state, configs)
    elif state.current_stage == Stage.SHARE_KEYS:
        res = _share_keys(state, configs)
    elif state.current_stage == Stage.COLLECT_MASKED_VECTORS:
        router = _is_router(msg)
        if router:
            _tell_threshold(msg, state)
        out_msg = call_next(msg, ctxt)
        if out_msg.has_error():
            return out_msg
        out_content = out_msg.content
        fitres = compat.recorddict_to_fitres(out_content, keep_input=True)
        if router:
            res = _collect_masked_vectors(
                state,
                configs,
                fitres.num_examples,
                fitres.parameters,
                levels=_router_levels(state, fitres.num_examples, fitres.parameters),
            )
        else:
            rng = _rounding(msg, ctxt)
            res = _collect_masked_vectors(
                state,
                configs,
                fitres.num_examples,
                fitres.parameters,
                rng,
                _user_level_noise(msg, state, fitres.parameters, rng),
            )
        for arr_record in out_content.array_records.values():
            arr_record.clear()
    elif state.current_stage == Stage.UNMASK:
        res = _unmask(state, configs)
    else:
        raise ValueError(f"Unknown SecAgg+ stage: {state.current_stage}")

    ctxt.state.config_records[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
    out_content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(res, False)
    return Message(out_content, reply_to=msg)


_FITINS_CONFIG = "fitins.config"  # Flower's legacy layout of a TRAIN message's config


def _is_router(msg: Message) -> bool:
    return instructed_task(msg.content.config_records.get(_FITINS_CONFIG)) == ROUTER_TASK


def _tell_threshold(msg: Message, state: SecAggPlusState) -> None:
    """Hand the task SecAgg+'s reconstruction threshold ``t`` of this device's own state (set at the setup
    stage): the router's noise share is ``v / t``, and any sum the server can unmask holds ``t`` uploads."""
    msg.content.config_records[_FITINS_CONFIG][SECAGG_THRESHOLD] = int(state.threshold)


def _router_levels(
    state: SecAggPlusState, num_examples: int, upload: Parameters
) -> list[np.ndarray]:
    """The router task's integer levels, checked against the server's SecAgg+ settings: the grid must be the
    router's (``2**NOISED_QUANTIZATION_BITS`` levels over ``[-1, 1]``, the one the device's ledger was charged
    for) and the weight one, so that the levels are summed as they are. Otherwise nothing is sent."""
    from fedpers.personas.router_stats import CLIPPING_RANGE
    from fedpers.privacy.user_level import NOISED_QUANTIZATION_BITS

    expected = (CLIPPING_RANGE, 2**NOISED_QUANTIZATION_BITS)
    if (float(state.clipping_range), int(state.target_range)) != expected:
        raise ValueError(
            f"SecAgg+ grid (clipping_range {state.clipping_range}, quantization_range {state.target_range}) "
            f"is not the router's {expected}; nothing was sent"
        )
    if num_examples != state.max_weight:
        raise ValueError(
            f"the router's upload is summed unweighted: weight {num_examples} must equal SecAgg+'s max_weight "
            f"{state.max_weight}; nothing was sent"
        )
    levels = parameters_to_ndarrays(upload)
    if not levels or any(a.dtype.kind not in "iu" for a in levels):
        raise ValueError("the router's upload must be integer levels; nothing was sent")
    return [np.asarray(a, dtype=np.int64) for a in levels]


def _rounding(msg: Message, ctxt: Context) -> np.random.Generator | None:
    """The stochastic rounding's generator: ``None`` (Flower's, from OS entropy) unless the run sets the benchmark
    switch ``noise_seed >= 0``; then one derived from it, this device's user and the round, so that a seeded run
    is reproducible end to end. The rounding protects nothing (the DP noise does); the run is marked not private.
    A message without fedpers instructions (the mod serving another app) keeps Flower's rounding."""
    record = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    if instructed_task(record) is None:
        return None
    instructions = RoundInstructions.from_record(record)
    if instructions.config.privacy.noise_seed < 0:
        return None
    who = ctxt.node_config.get("user-id", ctxt.node_config.get("partition-id", ctxt.node_id))
    key = f"{instructions.config.privacy.noise_seed}/{who}/{instructions.server_round}/secagg-rounding".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def _user_level_noise(
    msg: Message, state: SecAggPlusState, upload: Parameters, rounding: np.random.Generator | None
) -> tuple[float, np.random.Generator] | None:
    """User-level DP: the variance of this device's Skellam share and the generator it is drawn from;
    ``None`` for a run without user-level DP (or a message without fedpers instructions).

    The share is ``v / t`` (:class:`fedpers.privacy.user_level.DistributedNoise`), with ``v`` computed from
    the run's settings and the grid the device's user-level ledger was charged for. A server whose SecAgg+
    grid differs from that grid is refused: the ledger would not describe the noise. The generator is seeded
    from OS entropy; only the benchmark switch ``noise_seed >= 0`` (a run marked not private) derives it
    from the seeded rounding generator."""
    from fedpers.privacy.user_level import NOISED_QUANTIZATION_BITS, DistributedNoise

    record = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    if instructed_task(record) is None:
        return None
    config = RoundInstructions.from_record(record).config
    if not config.privacy.user_dp:
        return None
    dimension = sum(int(a.size) for a in parameters_to_ndarrays(upload))
    expected = DistributedNoise.for_settings(
        config.privacy.user_noise_multiplier, config.aggregation.update_clip, dimension
    )
    offered = DistributedNoise.for_round(
        config.privacy.user_noise_multiplier,
        config.aggregation.update_clip,
        state.clipping_range,
        state.target_range,
        dimension,
    )
    if offered != expected:
        raise ValueError(
            f"SecAgg+ grid (clipping_range {state.clipping_range}, quantization_range "
            f"{state.target_range}) is not the one this device's user-level ledger was charged for "
            f"({config.aggregation.update_clip}, {2**NOISED_QUANTIZATION_BITS}); nothing was sent"
        )
    rng = rounding or np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    return expected.share_variance(int(state.threshold)), rng


def _collect_masked_vectors(
    state: SecAggPlusState,
    configs: ConfigRecord,
    num_examples: int,
    updated_parameters: Parameters,
    rng: np.random.Generator | None = None,
    noise: tuple[float, np.random.Generator] | None = None,
    levels: list[np.ndarray] | None = None,
) -> dict[str, ConfigRecordValues]:
    """Flower's stage 2 (decrypt shares, quantize, add private and pairwise masks) with keystream masks;
    with ``noise = (variance, generator)``, a share of Skellam noise of that variance is added to every
    quantized coordinate before masking (user-level DP, :mod:`fedpers.privacy.user_level`). ``levels``: an
    upload already quantized on this session's grid (and noised), masked as it is (the router's)."""
    ciphertexts = cast(list[bytes], configs[Key.CIPHERTEXT_LIST])
    srcs = cast(list[int], configs[Key.SOURCE_LIST])
    if len(ciphertexts) + 1 < state.threshold:
        raise ValueError("Not enough available neighbour clients.")
    available: list[int] = []
    for src, ciphertext in zip(srcs, ciphertexts, strict=True):
        actual_src, dst, rd_seed_share, sk1_share = share_keys_plaintext_separate(
            decrypt(state.ss2_dict[src], ciphertext)
        )
        if src != actual_src or dst != state.nid:
            raise ValueError(
                f"Node {state.nid}: a key share from {actual_src} to {dst} arrived as from {src}"
            )
        available.append(src)
        state.rd_seed_share_dict[src] = rd_seed_share
        state.sk1_share_dict[src] = sk1_share

    ratio = num_examples / state.max_weight
    if ratio > 1:
        log(
            WARNING,
            "SecAgg+: weight %s exceeds max_weight %s and may overflow",
            num_examples,
            state.max_weight,
        )
    q_ratio = round(ratio * state.target_range)
    quantized = (
        levels
        if levels is not None
        else quantize_upload(
            parameters_to_ndarrays(updated_parameters),
            q_ratio / state.target_range,
            state.clipping_range,
            state.target_range,
            rng,
        )
    )
    if noise is not None:
        from fedpers.privacy.skellam import sample_skellam

        variance, noise_rng = noise
        quantized = [q + sample_skellam(q.shape, variance, noise_rng) for q in quantized]
    vector = factor_combine(q_ratio, quantized)
    shapes = [a.shape for a in vector]
    vector = parameters_addition(vector, keystream_masks(state.rd_seed, state.mod_range, shapes))
    for node_id in available:
        shared_key = generate_shared_key(
            bytes_to_private_key(state.sk1), bytes_to_public_key(state.public_keys_dict[node_id][0])
        )
        pairwise = keystream_masks(shared_key, state.mod_range, shapes)
        vector = (
            parameters_addition(vector, pairwise)
            if state.nid > node_id
            else parameters_subtraction(vector, pairwise)
        )
    vector = parameters_mod(vector, state.mod_range)
    log(DEBUG, "Node %d: masked vector ready", state.nid)
    return {Key.MASKED_PARAMETERS: [ndarray_to_bytes(arr) for arr in vector]}


def quantize_upload(
    arrays: list[np.ndarray],
    weight: float,
    clipping_range: float,
    target_range: int,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Flower's weighting and stochastic quantization, computed in float64.

    Flower quantizes in the arrays' own dtype: a float32 upload scaled to ``target_range = 2**30``
    keeps only 24 bits, so every value is rounded to a multiple of 32 or 64 levels before the stochastic
    rounding even starts. Widening first keeps the error at one level. With ``rng`` the rounding draws
    from it (the same rule as Flower's: x = (x_c + c) * R / 2c rounds up with probability frac(x),
    where x_c is x clipped to [-c, c]); without, Flower's ``quantize`` draws from NumPy's global generator.
    """
    wide = parameters_multiply([np.asarray(a, dtype=np.float64) for a in arrays], weight)
    if rng is None:
        return [q.astype(np.int64) for q in quantize(wide, clipping_range, target_range)]
    quantizer = target_range / (2 * clipping_range)
    out = []
    for arr in wide:
        scaled = quantizer * (np.clip(arr, -clipping_range, clipping_range) + clipping_range)
        up = np.ceil(scaled).astype(np.int64)
        up[rng.random(up.shape) < up - scaled] -= 1
        out.append(up)
    return out


CLIENT_MODS = [secaggplus_mod]
