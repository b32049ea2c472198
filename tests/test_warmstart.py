"""Public warm start: public data only, deterministic, and every adapter starts from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedpers.adapters import GLOBAL
from fedpers.federated import FederatedConfig
from fedpers.models import adapter_arrays
from fedpers.models.chat import encode_conversations
from fedpers.models.environment import model_environment
from fedpers.models.personalized import token_loss_sums
from fedpers.userdata import conversations
from fedpers.warmstart import (
    public_conversations,
    public_split,
    public_update_clip,
    public_warm_start,
)
from server.app import initial_adapters


def _config(**changes) -> FederatedConfig:
    values = {"model": "tiny", "public_data": "synthetic", "public_steps": 12, "max_length": 48}
    return FederatedConfig.from_flat(values | changes).validated()


def test_the_public_split_is_its_own_invented_users_and_shares_nothing_with_the_devices():
    config = _config()
    public, private = public_conversations(config), conversations(config)
    assert public and all(c.user_id.startswith("public-") for c in public)
    assert {c.persona for c in public} == set(config.persona_names)
    private_answers = {t.text for c in private for t in c.turns if t.role == "assistant"}
    public_answers = [t.text for c in public for t in c.turns if t.role == "assistant"]
    assert not set(public_answers) & private_answers
    assert not {c.user_id for c in public} & {c.user_id for c in private}
    # regenerated identically: anyone with the package holds the same public data
    assert public == public_conversations(config)
    # its seed follows data_seed, like the private data's
    assert public != public_conversations(_config(data_seed=1))


def _loss(config: FederatedConfig, arrays: dict, convs: list) -> float:
    from fedpers.models import load_adapter_arrays
    from fedpers.models.chat import collate

    env = model_environment(config)
    load_adapter_arrays(env.model.lm, arrays)
    env.model.use_user_embedding = False
    examples = encode_conversations(env.tokenizer, convs, config.dataset.max_length)
    total, tokens = token_loss_sums(env.model, collate(examples, env.pad_token_id))
    return total / tokens


def test_the_warm_start_trains_the_adapter_on_public_data_deterministically_and_leaves_the_model_as_it_was():
    config = _config()
    env = model_environment(config)
    fresh = adapter_arrays(env.model.lm)
    warm = public_warm_start(config, fresh)
    again = public_warm_start(config, fresh)
    assert all(np.array_equal(warm[k], again[k]) for k in fresh)
    assert any(not np.array_equal(warm[k], fresh[k]) for k in fresh)
    # the process's model keeps the adapter it had
    assert all(np.array_equal(adapter_arrays(env.model.lm)[k], fresh[k]) for k in fresh)
    public = public_conversations(config)[:40]
    assert _loss(config, warm, public) < _loss(config, fresh, public)
    # no warm start set: the adapter is returned as it was
    off = FederatedConfig.from_flat({"model": "tiny"}).validated()
    assert public_warm_start(off, fresh) is fresh


def test_the_warm_start_through_the_trunk_cache_trains_the_adapter_the_full_model_would(
    monkeypatch,
):
    """LoRA on the top layer only: the public conversations' trunk states are computed once and the steps run
    the LoRA layer alone; same batches, same adapter as through the whole model (to float error)."""
    import fedpers.models.trunk as trunk
    from fedpers.models.environment import ModelEnvironment

    config = _config(lora_layers=1)
    env = model_environment(config)
    assert env.trunk_layer is not None
    fresh = adapter_arrays(env.model.lm)
    calls = []
    original = trunk.trunk_states

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(trunk, "trunk_states", counted)
    cached = public_warm_start(config, fresh)
    assert len(calls) == 1 and calls[0] > 0  # once, for every public training conversation
    monkeypatch.setattr(ModelEnvironment, "trunk_layer", property(lambda self: None))
    full = public_warm_start(config, fresh)
    assert any(not np.array_equal(cached[k], fresh[k]) for k in fresh)
    for k in fresh:
        np.testing.assert_allclose(cached[k], full[k], rtol=1e-3, atol=1e-5)


def test_every_adapter_starts_from_the_warm_start_and_inferred_personas_add_their_noise_to_it():
    config = _config()
    warm = public_warm_start(config, adapter_arrays(model_environment(config).model.lm))
    adapters = initial_adapters(config, warm)
    assert set(adapters) == {GLOBAL, *config.persona_names}
    for name in adapters:
        assert all(np.array_equal(adapters[name][k], warm[k]) for k in warm)
    inferred = initial_adapters(_config(persona_mode="inferred"), warm)
    for persona in config.persona_names:
        for k in warm:
            diff = inferred[persona][k].astype(np.float64) - warm[k]
            if "lora_B" in k:  # a small perturbation of the warm start, not a replacement of it
                assert 0 < np.abs(diff).max() < 0.1
            else:
                assert not diff.any()


def test_a_public_jsonl_is_read_as_the_operator_declares_it(tmp_path):
    source = public_conversations(_config())[:5]
    path = tmp_path / "public.jsonl"
    path.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in source))
    config = _config(public_data=str(path))
    assert [c.conversation_id for c in public_conversations(config)] == [
        c.conversation_id for c in source
    ]


@pytest.mark.parametrize(
    "changes", [{"public_steps": 0}, {"public_data": ""}, {"public_steps": -1}]
)
def test_a_half_set_warm_start_is_refused(changes):
    with pytest.raises(ValueError, match="public"):
        _config(**changes)


@pytest.mark.slow  # Ray
def test_a_simulation_starts_from_the_public_warm_start_and_ffa_keeps_a_fixed(tmp_path):
    from fedpers.federated import load_config_file
    from fedpers.rundir import load_adapters
    from simulations.simulate import SCENARIOS, simulate

    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "noise_seed": 7,
        "state_dir": str(tmp_path / "client-state"),
        "rounds": 1,
        "public_data": "synthetic",
        "public_steps": 8,
        "lora_train_a": False,
        "audit": False,
        "evaluate": False,
    }
    config = FederatedConfig.from_flat(values).validated()
    fresh = adapter_arrays(model_environment(config).model.lm)
    warm = public_warm_start(config, fresh)
    simulate(config, tmp_path)
    adapters = load_adapters(tmp_path)
    for arrays in adapters.values():
        for k in warm:
            if "lora_A" in k:  # FFA: A is the warm start's A, which is the seeded initialisation
                assert np.array_equal(arrays[k], warm[k]) and np.array_equal(warm[k], fresh[k])
    # B moved from the warm start's B, which had moved from zero
    b = [k for k in warm if "lora_B" in k]
    assert all(warm[k].any() for k in b)
    assert any(not np.array_equal(adapters[GLOBAL][k], warm[k]) for k in b)


def test_the_shakespeare_public_speakers_are_speakers_no_device_holds():
    from fedpers.userdata import user_ids
    from fedpers.warmstart import PUBLIC_SPEAKERS

    config = _config(
        data="shakespeare", public_data="shakespeare", max_users=5, persona_mode="inferred"
    )
    public = public_conversations(config)
    devices = set(user_ids(config))
    speakers = {c.user_id.removeprefix("public-") for c in public}
    assert len(speakers) == PUBLIC_SPEAKERS and not speakers & devices
    assert all(c.user_id.startswith("public-") for c in public)
    private = {t.text for c in conversations(config) for t in c.turns if t.role == "assistant"}
    assert not {t.text for c in public for t in c.turns if t.role == "assistant"} & private
    with pytest.raises(ValueError, match="public_data 'shakespeare'"):
        public_conversations(_config(public_data="shakespeare"))


def test_the_public_update_clip_is_the_median_of_the_public_users_one_round_delta_norms():
    from fedpers.data.synthetic import derive_seed
    from fedpers.local import LocalTrainConfig, train_local
    from fedpers.models import load_adapter_arrays
    from fedpers.privacy import DPConfig, TrainConfig

    config = _config(local_steps=2, batch_size=2)
    env = model_environment(config)
    model = env.model
    start = public_warm_start(config, adapter_arrays(model.lm))
    untouched = adapter_arrays(model.lm)
    chosen = public_update_clip(config, start, seed=5)
    users = sorted({c.user_id for c in public_split(config)[0]})
    assert len(chosen.norms) == len(users) > 2
    assert chosen.clip == pytest.approx(float(np.median(chosen.norms))) and chosen.clip > 0
    assert all(np.array_equal(v, untouched[k]) for k, v in adapter_arrays(model.lm).items())
    # one user's norm, recomputed here from train_local itself: the round the devices run, no DP, from start
    first = [c for c in public_split(config)[0] if c.user_id == users[0]]
    load_adapter_arrays(model.lm, start)
    model.train_lora_a = config.model.lora_train_a
    result = train_local(
        model,
        encode_conversations(env.tokenizer, first, config.dataset.max_length),
        env.pad_token_id,
        LocalTrainConfig(
            lora=TrainConfig(
                steps=2,
                batch_size=2,
                learning_rate=config.local.learning_rate,
                noise_seed=derive_seed(5, users[0], "public-clip") % 2**63,
            ),
            dp=DPConfig(enabled=False),
            embedding=TrainConfig(steps=0),
        ),
        None,
    )
    load_adapter_arrays(model.lm, untouched)
    norm = float(
        np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in result.delta.arrays.values()))
    )
    assert chosen.norms[0] == pytest.approx(norm, rel=1e-5)
    # deterministic in the public data and the seed
    assert public_update_clip(config, start, seed=5) == chosen
    assert public_update_clip(config, start, seed=6).norms != chosen.norms


def test_a_public_update_clip_without_public_data_is_refused():
    with pytest.raises(ValueError, match="update_clip_public needs public_data"):
        _config(public_data="", public_steps=0, update_clip_public=True)
