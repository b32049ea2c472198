"""The packaged SmolLM2 GGUF loads through transformers and is cached as safetensors."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedpers.models import base, load_base_model

TEXT = [{"role": "user", "content": "How do I reset my VPN password?"}]


@pytest.fixture(scope="module")
def gguf_reference():
    try:
        path = base.smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.fail(f"{err} (the README's set-up installs it)")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = tokenizer.apply_chat_template(TEXT, add_generation_prompt=True, return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        return ids, model(ids).logits


def test_gguf_is_dequantized_once_then_loaded_from_cache(gguf_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPERS_CACHE", str(tmp_path))
    ids, reference = gguf_reference
    first, tokenizer = load_base_model("smollm2")
    cached = list((tmp_path / "models").iterdir())
    assert len(cached) == 1 and base.is_cached(cached[0])
    assert (cached[0] / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".partial")]

    real_from_pretrained = AutoModelForCausalLM.from_pretrained
    gguf_loads = []

    def spy(*args, **kwargs):
        if "gguf_file" in kwargs:
            gguf_loads.append(kwargs["gguf_file"])
        return real_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(base.AutoModelForCausalLM, "from_pretrained", spy)
    second, tokenizer2 = load_base_model("smollm2")
    assert gguf_loads == []  # the second load never touches the GGUF
    assert (
        tokenizer2.apply_chat_template(TEXT, add_generation_prompt=True)["input_ids"]
        == ids[0].tolist()
    )
    with torch.no_grad():
        torch.testing.assert_close(first(ids).logits, reference)
        torch.testing.assert_close(second(ids).logits, reference)
    assert second.config.num_hidden_layers == 30 and second.config.hidden_size == 576
    assert not any(p.requires_grad for p in second.parameters())
