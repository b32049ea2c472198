"""Layered personas: global + w (persona - global), w chosen on public held-out data only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedpers.adapters import GLOBAL
from fedpers.federated import FederatedConfig
from fedpers.models import adapter_arrays
from fedpers.models.environment import model_environment
from fedpers.personas.layered import (
    MIX_GRID,
    MixChoice,
    best_weight,
    choose_weights,
    layered,
    mixed,
)
from fedpers.userdata import conversations
from fedpers.warmstart import public_heldout_examples, public_split, public_warm_start
from server.app import ServerRun, choose_layers, mix_note


def _config(**changes) -> FederatedConfig:
    values = {"model": "tiny", "public_data": "synthetic", "public_steps": 12, "max_length": 48}
    return FederatedConfig.from_flat(values | changes).validated()


def _adapter(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "l.lora_A.weight": (scale * rng.normal(size=(2, 6))).astype(np.float32),
        "l.lora_B.weight": (scale * rng.normal(size=(6, 2))).astype(np.float32),
    }


def test_the_endpoints_are_the_global_and_the_trained_persona_adapter():
    rng = np.random.default_rng(0)
    g, p = _adapter(rng), _adapter(rng)
    for k in g:
        assert np.array_equal(mixed(g, p, 0.0)[k], g[k])
        np.testing.assert_allclose(mixed(g, p, 1.0)[k], p[k], rtol=1e-6)
        np.testing.assert_allclose(mixed(g, p, 0.25)[k], g[k] + 0.25 * (p[k] - g[k]), rtol=1e-6)
        assert mixed(g, p, 0.5)[k].dtype == np.float32


def test_with_a_frozen_a_the_weight_update_is_linear_in_w():
    rng = np.random.default_rng(1)
    g, p = _adapter(rng), _adapter(rng)
    p["l.lora_A.weight"] = g["l.lora_A.weight"].copy()  # FFA-LoRA: A never moves

    def dw(a):
        return a["l.lora_B.weight"].astype(np.float64) @ a["l.lora_A.weight"]

    for w in MIX_GRID:
        np.testing.assert_allclose(
            dw(mixed(g, p, w)), dw(g) + w * (dw(p) - dw(g)), rtol=1e-5, atol=1e-6
        )


def test_the_smallest_loss_wins_and_ties_go_to_the_global_side():
    assert best_weight({0.0: 3.0, 0.5: 2.0, 1.0: 2.5}) == 0.5
    assert best_weight({1.0: 2.0, 0.25: 2.0, 0.0: 4.0}) == 0.25
    with pytest.raises(ValueError):
        best_weight({})


def test_layered_publishes_the_global_adapter_unchanged_and_mixes_only_the_chosen_personas():
    rng = np.random.default_rng(2)
    adapters = {GLOBAL: _adapter(rng), "a": _adapter(rng), "b": _adapter(rng)}
    out = layered(adapters, {"a": MixChoice(0.0)})
    assert out[GLOBAL] is adapters[GLOBAL] and out["b"] is adapters["b"]
    assert all(np.array_equal(out["a"][k], adapters[GLOBAL][k]) for k in adapters["a"])


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", ""])
def test_a_bad_persona_mix_is_refused_naming_the_setting(value):
    with pytest.raises(ValueError, match="persona_mix"):
        _config(persona_mix=value)


def test_the_public_held_out_part_is_public_and_the_warm_start_never_trains_on_it():
    config = _config()
    train, heldout = public_split(config)
    assert train and heldout
    assert not {c.conversation_id for c in train} & {c.conversation_id for c in heldout}
    private = {c.conversation_id for c in conversations(config)}
    assert all(c.conversation_id.startswith("public-") for c in heldout)
    assert not {c.conversation_id for c in heldout} & private
    env = model_environment(config)
    groups = public_heldout_examples(config, env)
    assert set(groups) == set(config.persona_names)
    assert sum(len(v) for v in groups.values()) == len(heldout)


def test_the_public_held_out_examples_carry_their_trunk_states_and_score_as_the_full_model_does():
    """The mix is scored every round on the same public conversations: their frozen trunk states are computed
    once, and each loss then runs only the LoRA layers (the same loss as the full model's, to float error)."""
    from dataclasses import replace

    from fedpers.personas.layered import _loss

    config = _config(
        lora_layers=1
    )  # the tiny model's lower layers are frozen: a trunk below the top one
    env = model_environment(config)
    assert env.trunk_layer is not None
    groups = public_heldout_examples(config, env)
    examples = [e for group in groups.values() for e in group]
    assert all(e.trunk is not None and e.trunk_layer == env.trunk_layer for e in examples)
    rng = np.random.default_rng(5)
    arrays = {
        k: (v + rng.normal(0.0, 0.05, size=v.shape)).astype(v.dtype)
        for k, v in adapter_arrays(env.model.lm).items()
    }
    full = [replace(e, trunk=None, trunk_layer=None) for e in examples]
    assert _loss(env, arrays, examples) == pytest.approx(_loss(env, arrays, full), abs=1e-4)


def test_auto_picks_the_weight_with_the_least_public_loss_and_never_a_worse_one_than_global():
    config = _config()
    env = model_environment(config)
    warm = public_warm_start(config, adapter_arrays(env.model.lm))
    rng = np.random.default_rng(3)
    ruined = {  # a persona adapter wrecked by noise: the public data sends it back to the global one
        k: (v + rng.normal(0.0, 3.0, size=v.shape)).astype(v.dtype) for k, v in warm.items()
    }
    persona = config.persona_names[0]
    adapters = {GLOBAL: warm, persona: ruined}
    public = public_heldout_examples(config, env)
    before = adapter_arrays(env.model.lm)
    choice = choose_weights(env, adapters, [persona], "auto", public)[persona]
    assert set(choice.losses) == set(MIX_GRID)
    assert choice.losses[choice.weight] == min(choice.losses.values())
    assert choice.losses[choice.weight] <= choice.losses[0.0]
    assert choice.weight < 1.0 and choice.losses[1.0] > choice.losses[0.0]
    assert choice.conversations == len(public[persona])
    assert "persona " + persona in choice.source
    # scoring leaves the model's adapter as it was
    assert all(np.array_equal(adapter_arrays(env.model.lm)[k], before[k]) for k in before)
    # the other way round: the global adapter is the wrecked one, the persona's own wins
    flipped = choose_weights(env, {GLOBAL: ruined, persona: warm}, [persona], "auto", public)
    assert flipped[persona].weight > 0.0


def test_without_public_data_auto_keeps_the_persona_adapter_and_a_number_fixes_the_weight():
    rng = np.random.default_rng(4)
    adapters = {GLOBAL: _adapter(rng), "a": _adapter(rng)}
    assert choose_weights(None, adapters, ["a"], "auto", None)["a"].weight == 1.0
    assert choose_weights(None, adapters, ["a"], "auto", {})["a"].weight == 1.0
    fixed = choose_weights(None, adapters, ["a"], "0.5", {"a": ["never scored"]})["a"]
    assert fixed.weight == 0.5 and not fixed.losses


def test_the_server_layers_trained_personas_only_and_publishes_the_layered_adapters():
    config = _config()
    env = model_environment(config)
    warm = public_warm_start(config, adapter_arrays(env.model.lm))
    rng = np.random.default_rng(5)
    adapters = {GLOBAL: warm} | {
        p: {k: (v + rng.normal(0.0, 3.0, size=v.shape)).astype(v.dtype) for k, v in warm.items()}
        for p in config.persona_names
    }
    trained = config.persona_names[:2]
    run = SimpleNamespace(
        config=config,
        state=SimpleNamespace(adapters=adapters, trained=set(trained)),
        mixing={},
        public_heldout=None,
        public_groups=None,
    )
    choose_layers(run)  # type: ignore[arg-type]
    assert set(run.mixing) == set(trained)
    assert run.public_heldout is not None
    published = ServerRun.published(run)  # type: ignore[arg-type]
    for p in trained:
        w = run.mixing[p].weight
        assert all(
            np.allclose(published[p][k], warm[k] + w * (adapters[p][k] - warm[k]), atol=1e-6)
            for k in warm
        )
    untrained = config.persona_names[2]
    assert published[untrained] is adapters[untrained]
    assert "w = " in mix_note(run.mixing)


def test_inferred_personas_score_each_weight_on_the_public_users_of_their_centroid():
    """With personas chosen from the prompts, what the public users declare may be nothing (a public JSONL
    without personas, tinyshakespeare's speakers): each persona's weight is scored on the held-out conversations
    of the public users whose prompts the server's clean clustering placed at that persona's centroid
    (``run.public_groups``), not on everyone's."""
    config = _config()
    env = model_environment(config)
    _, heldout = public_split(config)
    first, second = config.persona_names[:2]
    users = sorted({c.user_id for c in heldout})
    groups = {u: (first if i % 3 else second) for i, u in enumerate(users)}
    got = public_heldout_examples(config, env, groups)
    assert set(got) == {first, second}
    for persona in (first, second):
        assert len(got[persona]) == sum(groups[c.user_id] == persona for c in heldout)
    warm = public_warm_start(config, adapter_arrays(env.model.lm))
    run = SimpleNamespace(
        config=config,
        state=SimpleNamespace(adapters={GLOBAL: warm, first: warm}, trained={first}),
        mixing={},
        public_heldout=None,
        public_groups=groups,
    )
    choose_layers(run)  # type: ignore[arg-type]
    assert set(run.public_heldout) == {first, second}
    assert run.mixing[first].conversations == len(got[first])
    assert "persona " + first in run.mixing[first].source
