"""bfloat16 for the frozen computation (the ``bf16`` setting): the head and frozen passes only, never DP-SGD's
trained layers, per-sample gradients or clipping; the losses stay close to float32's."""

import pytest
import torch
from opacus import GradSampleModule
from test_trunk import cached, lora_net

from fedpers.federated import FederatedConfig
from fedpers.local import set_trainable
from fedpers.models import collate
from fedpers.models import precision as precision_module
from fedpers.models.precision import FrozenHead, resolve_bf16
from fedpers.models.trunk import causal_lm_parts


def test_the_setting_resolves_and_refuses_other_values(monkeypatch):
    assert resolve_bf16("off") is False and resolve_bf16("on") is True
    for native in (True, False):
        monkeypatch.setattr(precision_module, "native_bf16", lambda native=native: native)
        assert resolve_bf16("auto") is native
    with pytest.raises(ValueError, match="setting bf16"):
        resolve_bf16("fp16")
    with pytest.raises(ValueError, match="setting bf16"):
        FederatedConfig.from_flat({"bf16": "yes"}).validated()
    assert FederatedConfig().model.bf16 == "off"


def _linear_input_dtypes(net, by_layer: dict | None = None) -> list[torch.dtype]:
    """The dtype each decoder layer's q_proj base layer computes in, recorded on the next passes (and, in
    ``by_layer``, per layer index)."""
    seen: list[torch.dtype] = []
    backbone, _ = causal_lm_parts(net.lm)

    for index, layer in enumerate(backbone.layers):

        def hook(module, args, output, index=index):
            seen.append(output.dtype)
            if by_layer is not None:
                by_layer.setdefault(index, set()).add(output.dtype)

        q = layer.self_attn.q_proj
        (getattr(q, "base_layer", q)).register_forward_hook(hook)
    return seen


def test_dp_sgd_layers_and_per_sample_gradients_stay_float32(examples):
    net, tok = lora_net()
    net.bf16 = True
    batch = collate(cached(net, examples[:4], tok.pad_token_id), tok.pad_token_id)
    seen = _linear_input_dtypes(net)
    net.train()
    gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum")
    try:
        gsm(**batch).sum().backward()
        trained = [p for p in net.parameters() if p.requires_grad]
        assert trained and all(p.grad_sample.dtype == torch.float32 for p in trained)
    finally:
        gsm._close()
    assert seen and set(seen) == {torch.float32}, "LoRA layers that train run in float32"


def test_frozen_passes_run_in_bfloat16_and_their_losses_stay_close(examples):
    net, tok = lora_net()
    set_trainable(net, lora=False, embedding=False)
    batch = collate(cached(net, examples[:6], tok.pad_token_id), tok.pad_token_id)
    full = {k: v for k, v in batch.items() if k not in ("trunk", "trunk_layer")}
    seen = _linear_input_dtypes(net)
    with torch.no_grad():
        reference = {"trunk": net(**batch), "full": net(**full)}
        net.bf16 = True
        low = {"trunk": net(**batch), "full": net(**full)}
    assert torch.bfloat16 in seen and torch.float32 in seen
    for path in reference:
        assert low[path].dtype == torch.float32
        assert not torch.equal(low[path], reference[path]), path
        torch.testing.assert_close(low[path], reference[path], rtol=2e-2, atol=0.0)


def test_the_user_embedding_phase_runs_frozen_layers_in_bfloat16(examples):
    net, tok = lora_net()
    set_trainable(net, lora=False, embedding=True)
    net.use_user_embedding = True
    net.bf16 = True
    seen = _linear_input_dtypes(net)
    batch = collate(examples[:4], tok.pad_token_id)
    net(**batch).sum().backward()
    grad = net.user_embedding.embedding.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())
    assert seen and set(seen) == {torch.bfloat16}
    set_trainable(net, lora=True, embedding=True)  # joint DP-SGD: LoRA trains, so no autocast
    seen.clear()
    net(**batch).sum().backward()
    assert set(seen) == {torch.float32}


def test_the_bfloat16_head_is_for_a_frozen_head_and_follows_its_weight():
    head = torch.nn.Linear(8, 32, bias=False)
    hidden = torch.randn(5, 8)
    frozen = FrozenHead()
    with pytest.raises(ValueError, match="frozen head"):
        frozen.logits(head, hidden)
    head.weight.requires_grad_(False)
    torch.testing.assert_close(frozen.logits(head, hidden), head(hidden), rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        head.weight.mul_(-1.0)  # a changed weight is cast again
    torch.testing.assert_close(frozen.logits(head, hidden), head(hidden), rtol=2e-2, atol=2e-2)


def test_frozen_trunk_layers_in_bfloat16_on_both_paths_trained_layers_in_float32(examples):
    """With bf16 the cached trunk states and the full path's layers below the first LoRA layer are
    computed alike, in bfloat16 (a cache key of their own); the LoRA layers DP-SGD trains stay float32."""
    from fedpers.models.environment import ModelEnvironment
    from fedpers.models.trunk import trunk_key, trunk_states, with_trunk

    net, tok = lora_net()
    pad, k = tok.pad_token_id, net.trunk_layer
    plain = trunk_states(net.lm, examples[:4], pad, k)
    low = trunk_states(net.lm, examples[:4], pad, k, bf16=True)
    assert all(s.dtype == torch.float32 for s in low)
    assert not torch.equal(plain[0], low[0])
    assert float((low[0] - plain[0]).norm() / plain[0].norm()) < 2e-2
    net.bf16 = True
    by_layer: dict[int, set] = {}
    _linear_input_dtypes(net, by_layer)
    full = collate(examples[:4], pad)
    low_batch = collate(with_trunk(examples[:4], low, k), pad)
    on_cache, on_full = net(**low_batch), net(**full)
    torch.testing.assert_close(on_cache, on_full, rtol=1e-3, atol=1e-4)
    assert all(by_layer[i] == {torch.bfloat16} for i in range(k))
    assert all(by_layer[i] == {torch.float32} for i in range(k, len(by_layer)))
    env = ModelEnvironment(net, tok, torch.zeros(1), "tiny")
    assert env.states_id != "tiny"
    assert trunk_key(env.states_id, k, examples[:4]) != trunk_key("tiny", k, examples[:4])
