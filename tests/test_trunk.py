"""The frozen-trunk path gives the full path's losses and per-sample gradients, and is taken only
where it is exact: never with the user embedding in use."""

import numpy as np
import pytest
import torch
from conftest import personalized
from opacus import GradSampleModule

from fedpers.evaluation import evaluate
from fedpers.local import set_trainable
from fedpers.models import adapter_arrays, collate, load_base_model
from fedpers.models.chat import IGNORE_INDEX, EncodedExample
from fedpers.models.personalized import FULL, TRUNK
from fedpers.models.trunk import first_adapted_layer, trunk_key, trunk_states, with_trunk
from fedpers.privacy import DPConfig, PrivacyLedger, TrainConfig, train
from fedpers.privacy.dp_sgd import per_sample_grad_norms
from fedpers.userdata import UserData, attach_trunk

RTOL = 1e-5  # relative, float32


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def lora_net(top_layers: int = 2):
    """The tiny model with LoRA on its top layers, B moved off zero so every LoRA gradient is non-zero."""
    model, tok = load_base_model("tiny")
    net = personalized(model, tok, top_layers=top_layers)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    set_trainable(net, lora=True, embedding=False)
    net.use_user_embedding = False
    return net, tok


def varied(examples):
    """The examples cut to different lengths (each keeps some assistant tokens)."""
    return [
        EncodedExample(e.input_ids[: 64 - 2 * (i % 8)], e.labels[: 64 - 2 * (i % 8)])
        for i, e in enumerate(examples)
    ]


def cached(net, examples, pad):
    layer = net.trunk_layer
    return with_trunk(examples, trunk_states(net.lm, examples, pad, layer), layer)


def per_sample(net, batch):
    net.train()
    gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum")
    params = [p for p in net.parameters() if p.requires_grad]
    try:
        losses = gsm(**batch)
        losses.sum().backward()
        grads = [p.grad_sample.detach().clone() for p in params]
    finally:
        for p in params:
            p.grad_sample, p.grad = None, None
        gsm._close()
    return losses.detach(), grads


def test_the_trunk_starts_at_the_first_lora_layer():
    net, _ = lora_net(top_layers=2)
    assert net.trunk_layer == 2 == first_adapted_layer(net.lm)
    everywhere, _ = lora_net(top_layers=4)  # LoRA on layer 0: nothing to cache
    assert everywhere.trunk_layer is None


def test_cached_path_gives_the_full_paths_loss_and_per_sample_gradients(examples):
    net, tok = lora_net()
    pad = tok.pad_token_id
    # lengths differ within the batch: padding must not leak into either path
    batch_examples = varied(examples[:6])
    assert len({len(e.input_ids) for e in batch_examples}) == 6
    assert all(any(t != IGNORE_INDEX for t in e.labels[1:]) for e in batch_examples)
    full_batch = collate(batch_examples, pad)
    cached_batch = collate(cached(net, batch_examples, pad), pad)
    assert "trunk" not in full_batch and "trunk" in cached_batch

    full_losses, full_grads = per_sample(net, full_batch)
    assert net.last_path == FULL
    cached_losses, cached_grads = per_sample(net, cached_batch)
    assert net.last_path == TRUNK

    assert relative(cached_losses, full_losses) <= RTOL
    assert len(full_grads) == len(cached_grads) == 8  # A and B of q and v in 2 layers
    for f, c in zip(full_grads, cached_grads, strict=True):
        assert f.shape[0] == len(batch_examples)
        assert f.abs().sum() > 0
        for i in range(len(batch_examples)):  # each example's own gradient
            assert relative(c[i], f[i]) <= RTOL


def test_trunk_states_do_not_depend_on_batch_mates(examples):
    net, tok = lora_net()
    pad = tok.pad_token_id
    mixed = varied(examples[:8])
    together = trunk_states(net.lm, mixed, pad, net.trunk_layer, batch_size=8)
    alone = [trunk_states(net.lm, [e], pad, net.trunk_layer)[0] for e in mixed]
    for t, a, e in zip(together, alone, mixed, strict=True):
        assert t.shape == (len(e.input_ids), net.lm.config.hidden_size)
        assert relative(t, a) <= RTOL


def test_dp_sgd_and_evaluation_agree_on_both_paths(examples, tmp_path):
    results = {}
    for label in ("full", "cached"):
        net, tok = lora_net()
        pad = tok.pad_token_id
        data = varied(examples) if label == "full" else cached(net, varied(examples), pad)
        ledger = PrivacyLedger(tmp_path / f"{label}.json", "u")
        config = TrainConfig(steps=4, batch_size=6, learning_rate=5e-2, noise_seed=11)
        result = train(net, data, pad, config, DPConfig(noise_multiplier=1.0), ledger)
        norms = per_sample_grad_norms(net, data, pad)
        results[label] = (
            adapter_arrays(net.lm),
            result.max_grad_norm,
            norms,
            evaluate(net, data, pad).loss,
        )
    (full_w, full_clip, full_norms, full_eval), (c_w, c_clip, c_norms, c_eval) = (
        results["full"],
        results["cached"],
    )
    assert full_clip == c_clip  # the private clip estimate saw the same norms
    np.testing.assert_allclose(c_norms, full_norms, rtol=1e-4)
    for k in full_w:
        np.testing.assert_allclose(c_w[k], full_w[k], rtol=1e-4, atol=1e-7)
    assert c_eval == pytest.approx(full_eval, rel=RTOL)


def test_the_user_embedding_always_takes_the_full_path(examples):
    net, tok = lora_net()
    pad = tok.pad_token_id
    batch = collate(cached(net, examples[:4], pad), pad)
    net.use_user_embedding = True
    with torch.no_grad():
        with_embedding = net(**batch)
    assert net.last_path == FULL
    without_trunk = {k: v for k, v in batch.items() if not k.startswith("trunk")}
    with torch.no_grad():
        assert torch.equal(net(**without_trunk), with_embedding)
    # and changing the embedding changes the loss: it is really in the forward pass
    with torch.no_grad():
        net.user_embedding.embedding.weight.add_(1.0)
        assert not torch.equal(net(**batch), with_embedding)


def test_states_of_another_layer_are_refused(examples):
    net, tok = lora_net(top_layers=2)
    pad = tok.pad_token_id
    higher = with_trunk(examples[:2], trunk_states(net.lm, examples[:2], pad, 3), 3)
    with pytest.raises(ValueError, match="do not fit"):
        net(**collate(higher, pad))


class MemoryCache:
    def __init__(self):
        self.items, self.saves = {}, 0

    def activations(self, key):
        return self.items.get(key)

    def save_activations(self, key, data):
        self.items = {key: data}
        self.saves += 1


def test_attach_trunk_computes_once_and_keys_on_model_layer_and_tokens(examples, tiny):
    from fedpers.models.environment import ModelEnvironment

    net, tok = lora_net()
    env = ModelEnvironment(net, tok, net.user_embedding.embedding.weight.detach(), "tiny")
    cache = MemoryCache()

    def fresh():
        return UserData("u", None, list(examples[:10]), list(examples[10:14]))

    first = attach_trunk(fresh(), env, cache)
    assert first.has_trunk and cache.saves == 1
    again = attach_trunk(fresh(), env, cache)  # another process: read back, not recomputed
    assert cache.saves == 1
    for a, b in zip(first.train + first.heldout, again.train + again.heldout, strict=True):
        assert torch.equal(a.trunk, b.trunk)
    key = trunk_key("tiny", 2, examples[:14])
    assert key in cache.items
    assert trunk_key("other-model", 2, examples[:14]) != key
    assert trunk_key("tiny", 1, examples[:14]) != key
    assert trunk_key("tiny", 2, examples[1:15]) != key
    changed = attach_trunk(UserData("u", None, list(examples[1:11]), []), env, cache)
    assert changed.has_trunk and cache.saves == 2  # other tokens: recomputed
