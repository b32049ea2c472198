"""The user embedding's prompt entering a deeper layer: cached entry states give the same loss and gradient
as computing the layers below, the states are attached and cached once, and the setting is checked."""

from __future__ import annotations

import pytest
import torch
from conftest import personalized

from fedpers.federated import FederatedConfig
from fedpers.local import set_trainable
from fedpers.models import collate
from fedpers.models.environment import embedding_learning_rate, model_environment
from fedpers.models.personalized import ENTRY, FULL
from fedpers.models.trunk import causal_lm_parts, layer_states, run_layers, with_entry
from fedpers.models.user_embedding import PUBLIC_INIT_TEXT
from fedpers.userdata import UserData, attach_trunk

RTOL = 1e-5


def _net(tiny, layer: int):
    model, tokenizer = tiny
    net = personalized(
        model, tokenizer, top_layers=1
    )  # LoRA on layer 3 of 4: the trunk is layers 0-2
    net.embedding_layer = layer
    with torch.no_grad():
        net.user_embedding.embedding.weight.normal_(
            0, 0.5, generator=torch.Generator().manual_seed(2)
        )
    set_trainable(net, lora=False, embedding=True)
    net.use_user_embedding = True
    return net, tokenizer


def _loss_and_grad(net, batch):
    net.zero_grad(set_to_none=True)
    loss = net(**batch).sum()
    loss.backward()
    return loss.detach(), net.user_embedding.embedding.weight.grad.clone()


def test_cached_entry_states_give_the_loss_and_prompt_gradient_of_the_layers_below(tiny, examples):
    net, tokenizer = _net(tiny, 2)
    pad = tokenizer.pad_token_id
    chunk = examples[:6]
    computed, grad_computed = _loss_and_grad(net, collate(chunk, pad))
    assert net.last_path == ENTRY
    states = layer_states(net.lm, chunk, pad, [2])[2]
    batch = collate(with_entry(chunk, states, 2), pad)
    assert batch["entry_layer"] == 2
    cached, grad_cached = _loss_and_grad(net, batch)
    assert net.last_path == ENTRY
    torch.testing.assert_close(cached, computed, rtol=RTOL, atol=0)
    torch.testing.assert_close(grad_cached, grad_computed, rtol=RTOL, atol=1e-7)
    assert float(grad_cached.norm()) > 0
    # the prompt matters: without it the loss differs
    net.use_user_embedding = False
    with torch.no_grad():
        plain = net(**collate(chunk, pad)).sum()
    assert abs(float(plain) - float(cached)) > 1e-3


def test_layer_states_in_one_pass_are_each_layers_own(tiny, examples):
    net, tokenizer = _net(tiny, 1)
    pad = tokenizer.pad_token_id
    both = layer_states(net.lm, examples[:5], pad, [3, 1])
    for layer in (1, 3):
        alone = layer_states(net.lm, examples[:5], pad, [layer])[layer]
        for a, b in zip(both[layer], alone, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_at_the_input_the_embedding_still_takes_the_full_path(tiny, examples):
    net, tokenizer = _net(tiny, 0)
    net(**collate(examples[:2], tokenizer.pad_token_id))
    assert net.last_path == FULL


def _config(layer: int) -> FederatedConfig:
    return FederatedConfig.from_flat(
        {"model": "tiny", "users_per_persona": 1, "lora_layers": 1, "embedding_layer": layer}
    ).validated()


def test_attach_trunk_adds_the_entry_states_once_and_reuses_the_cache(examples, monkeypatch):
    env = model_environment(_config(1))
    assert env.embedding_layer == 1 and env.trunk_layer == 3
    store: dict[str, bytes] = {}

    class Cache:
        def activations(self, key):
            return store.get(key)

        def save_activations(self, key, data):  # one item, as a device's store keeps
            store.clear()
            store[key] = data

    data = attach_trunk(UserData("u", None, list(examples[:4]), list(examples[4:6])), env, Cache())
    expected = layer_states(env.model.lm, examples[:6], env.pad_token_id, [1, 3])
    for i, e in enumerate([*data.train, *data.heldout]):
        assert e.entry_layer == 1 and e.trunk_layer == 3
        torch.testing.assert_close(e.entry, expected[1][i], rtol=0, atol=0)
        torch.testing.assert_close(e.trunk, expected[3][i], rtol=0, atol=0)
    assert (
        len(store) == 1
    )  # one item (a device store keeps one): both layers under a key naming them

    import fedpers.userdata as userdata

    def recomputed(*a, **k):
        raise AssertionError("states recomputed although the cache holds them")

    monkeypatch.setattr(userdata, "layer_states", recomputed)
    again = attach_trunk(UserData("u", None, list(examples[:4]), list(examples[4:6])), env, Cache())
    assert again.has_entry(1) and again.has_trunk


def test_the_public_prompt_is_the_init_texts_states_there_and_scales_the_learning_rate():
    config = _config(2)
    env = model_environment(config)
    backbone, _ = causal_lm_parts(env.model.lm)
    ids = env.tokenizer(PUBLIC_INIT_TEXT, add_special_tokens=False)["input_ids"]
    k = config.model.embedding_tokens
    tokens = torch.tensor([[ids[i % len(ids)] for i in range(k)]])
    with torch.no_grad():
        at_input = backbone.embed_tokens(tokens)
        expected = run_layers(backbone, at_input, torch.ones_like(tokens), 0, 2)[0]
    torch.testing.assert_close(env.public_embedding, expected, rtol=RTOL, atol=1e-6)
    ratio = float(expected.norm(dim=-1).mean() / at_input[0].norm(dim=-1).mean())
    assert embedding_learning_rate(config, env) == pytest.approx(config.local.embedding_lr * ratio)
    assert embedding_learning_rate(_config(0), model_environment(_config(0))) == pytest.approx(
        config.local.embedding_lr
    )


@pytest.mark.parametrize("layer", [-1, 4])
def test_an_entry_layer_outside_the_trunk_is_refused(layer):
    with pytest.raises(ValueError, match="embedding_layer"):
        model_environment(_config(layer))


def test_an_embedding_saved_for_another_layer_restarts_from_the_public_one():
    from clients.tasks import _load_embedding, _save_embedding

    env = model_environment(_config(1))

    class State:
        data: bytes | None = None

        def embedding(self):
            return self.data

        def save_embedding(self, data):
            self.data = data

    state = State()
    weight = env.model.user_embedding.embedding.weight
    with torch.no_grad():
        weight.fill_(0.25)
    _save_embedding(env, state)
    with torch.no_grad():
        weight.zero_()
    _load_embedding(env, state)
    assert torch.all(weight == 0.25)  # saved for this layer: kept

    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    tensors = load_tensors(state.data)
    tensors["layer"] = torch.tensor([0])
    state.data = save_tensors(tensors)  # the same vectors, trained for the input
    _load_embedding(env, state)
    torch.testing.assert_close(weight.detach(), env.public_embedding, rtol=0, atol=0)
