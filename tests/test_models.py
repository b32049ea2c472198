import torch
from conftest import personalized

from fedpers.models import IGNORE_INDEX, UserEmbedding, collate, encode_messages, load_base_model
from fedpers.models.personalized import sequence_losses

MESSAGES = [
    {"role": "user", "content": "My VPN drops"},
    {"role": "assistant", "content": "Restart the laptop."},
    {"role": "user", "content": "Still down"},
    {"role": "assistant", "content": "Sync your files offline."},
]


def test_loss_only_on_assistant_tokens(tiny):
    _, tok = tiny
    ex = encode_messages(tok, MESSAGES, 256)
    assert len(ex.input_ids) == len(ex.labels)
    targets = [i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert (
        tok.decode(targets) == "Restart the laptop.<|im_end|>\nSync your files offline.<|im_end|>\n"
    )
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ex.input_ids, ex.labels))


def test_truncation_keeps_latest_context(tiny):
    _, tok = tiny
    full = encode_messages(tok, MESSAGES, 256)
    short = encode_messages(tok, MESSAGES, 20)
    assert len(short.input_ids) == 20
    assert short.input_ids == full.input_ids[-20:] and short.labels == full.labels[-20:]
    assert encode_messages(tok, MESSAGES[:1], 64) is None  # nothing to learn from


def test_collate_pads_right_and_masks(tiny):
    _, tok = tiny
    a, b = encode_messages(tok, MESSAGES, 256), encode_messages(tok, MESSAGES[:2], 256)
    batch = collate([a, b], tok.pad_token_id)
    n = len(b.input_ids)
    assert batch["input_ids"].shape == (2, len(a.input_ids))
    assert batch["attention_mask"][1, n:].sum() == 0 and batch["attention_mask"][1, :n].all()
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all()


def test_tiny_model_is_deterministic_and_small(tiny):
    model, tok = tiny
    again, _ = load_base_model("tiny")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert len(tok) < 1024
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n
    assert not any(p.requires_grad for p in model.parameters())


def test_sequence_loss_independent_of_padding_and_batch(tiny):
    model, tok = tiny
    net = personalized(model, tok)
    a, b = encode_messages(tok, MESSAGES, 256), encode_messages(tok, MESSAGES[:2], 256)
    alone = net(**collate([b], tok.pad_token_id))
    together = net(**collate([a, b], tok.pad_token_id))
    torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-5)


def test_sequence_losses_match_reference_cross_entropy(tiny):
    model, tok = tiny
    batch = collate([encode_messages(tok, MESSAGES, 256)], tok.pad_token_id)
    with torch.no_grad():
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        ours = sequence_losses(hidden, batch["labels"], model.lm_head)
        reference = model(**batch).loss  # one sequence: transformers' mean equals ours
    torch.testing.assert_close(ours[0], reference, rtol=1e-5, atol=1e-6)


def test_user_embedding_prepends_and_round_trips(tiny, tmp_path):
    model, tok = tiny
    net = personalized(model, tok, embedding_tokens=3)
    batch = collate([encode_messages(tok, MESSAGES, 256)] * 2, tok.pad_token_id)
    with torch.no_grad():
        h_with = net.hidden_states(batch["input_ids"], batch["attention_mask"])
        net.use_user_embedding = False
        h_without = net.hidden_states(batch["input_ids"], batch["attention_mask"])
    assert (
        h_with.shape
        == h_without.shape
        == (2, batch["input_ids"].shape[1], model.config.hidden_size)
    )
    assert not torch.allclose(h_with, h_without)
    assert net.user_embedding(5).shape == (5, 3, model.config.hidden_size)
    net.user_embedding.save(tmp_path / "u.safetensors")
    loaded = UserEmbedding.load(tmp_path / "u.safetensors")
    assert torch.equal(loaded.embedding.weight, net.user_embedding.embedding.weight)


def test_local_model_directory_loads(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_base_model(str(tmp_path / "m"))
    ids = torch.tensor([tok("reset my VPN")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tok("reset my VPN")["input_ids"] == tok("reset my VPN")["input_ids"]


def test_unknown_model_option_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="not a model option"):
        load_base_model(str(tmp_path / "nope"))


def test_user_tokens_can_be_the_target(tiny):
    _, tok = tiny
    ex = encode_messages(tok, MESSAGES[:1], 256, target_roles=("user",))
    targets = [i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert tok.decode(targets) == "My VPN drops<|im_end|>\n"
