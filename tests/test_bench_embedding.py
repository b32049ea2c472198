"""The user-embedding entry benchmark: layer 0 is the project's user embedding, the moved prompt's pass is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from fedpers.federated import FederatedConfig
from fedpers.models.environment import model_environment
from fedpers.models.user_embedding import UserEmbedding
from fedpers.userdata import user_data, user_ids
from simulations import bench_embedding as bench


@pytest.fixture(scope="module")
def setup():
    config = FederatedConfig.from_flat(
        {"model": "tiny", "users_per_persona": 1, "lora_layers": 1}
    ).validated()
    env = model_environment(config)
    data = user_data(config, user_ids(config)[0], env)
    return config, env, data


def test_layer_zero_is_the_user_embedding_on_the_full_path(setup):
    config, env, data = setup
    model = env.model
    prompt = torch.randn(3, model.lm.get_input_embeddings().embedding_dim) * 0.05
    embedding = UserEmbedding(3, prompt.shape[1])
    with torch.no_grad():
        embedding.embedding.weight.copy_(prompt)
    saved = (model.user_embedding, model.use_user_embedding)
    model.user_embedding, model.use_user_embedding = embedding, True
    try:
        batch, hidden = bench._states(env, data.train[:4], 0)
        with torch.no_grad():
            expected = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
            got = bench.prompt_losses(env, prompt, batch, hidden, 0)
    finally:
        model.user_embedding, model.use_user_embedding = saved
    assert model.last_path == "full"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_an_empty_prompt_above_layer_zero_is_the_model_without_one(setup):
    config, env, data = setup
    model = env.model
    model.use_user_embedding = False
    batch, hidden = bench._states(env, data.heldout[:4], 1)
    empty = torch.zeros(0, hidden.shape[-1])
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        got = bench.prompt_losses(env, empty, batch, hidden, 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_deeper_entry_is_the_models_own_entry_path(setup):
    config, env, data = setup
    model = env.model
    prompt = bench.initial_prompt(env, 3, 2)
    embedding = UserEmbedding(3, prompt.shape[1])
    with torch.no_grad():
        embedding.embedding.weight.copy_(prompt + 0.01)
    saved = (model.user_embedding, model.use_user_embedding, model.embedding_layer)
    model.user_embedding, model.use_user_embedding, model.embedding_layer = embedding, True, 2
    try:
        batch, hidden = bench._states(env, data.train[:4], 2)
        with torch.no_grad():
            expected = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
            got = bench.prompt_losses(env, prompt + 0.01, batch, hidden, 2)
    finally:
        model.user_embedding, model.use_user_embedding, model.embedding_layer = saved
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_report_states_shares_and_speed_from_the_rows(setup):
    config, _, _ = setup
    rows = [
        bench.Entry(0, 1.0, 0.03, 0.25, 12.0, 0.0),
        bench.Entry(2, 0.3, 0.5, 0.24, 9.0, 1.0),
        bench.Entry(3, 1.0, 1.0, 0.10, 3.0, 1.5),
    ]
    result = {
        "rows": rows,
        "layers": 4,
        "trunk_layer": 3,
        "users": ["a", "b"],
        "heldout_tokens": 100,
        "config": copy.deepcopy(config),
        "factors": [1.0],
        "threads": 2,
        "torch": "x",
    }
    text = "\n".join(bench.report(result, "cmd"))
    assert (
        "| layer 3 (first LoRA layer: the cached path) | 1 of 4 | 1 | 0.1000 | 40 % | 3.0 | 4.00× |"
        in text
    )
    assert "keeps 40 % of the gain" in text
    assert (
        "cheapest entry that keeps at least 95 % of it is layer 2, 1.33× faster, with states of its own"
        in text
    )
    assert "largest gain" not in text
    rows[1].gain = 0.5
    text = "\n".join(bench.report(result, "cmd"))
    assert (
        "The largest gain is layer 2's, 0.500 nats (200 % of the input prompt's), 1.33× faster."
        in text
    )
