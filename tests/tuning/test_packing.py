"""Packed rows: each conversation of a row attended alone gives what transformers' block-diagonal mask gives."""

import pytest
import torch

from tuning.packing import PER_CONVERSATION, attend_per_conversation, conversation_spans


@pytest.mark.parametrize("positions,spans", [
    ([0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0, 0], [(0, 3), (3, 5), (5, 9), (9, 12)]),  # three conversations, then padding
    ([0, 1, 2, 3], [(0, 4)]),
    ([0, 1, 0, 1], [(0, 2), (2, 4)]),
    ([0, 0, 0], [(0, 3)]),  # nothing but padding: one span, not three
    ([], []),
])
def test_conversation_spans(positions, spans):
    assert conversation_spans(positions) == spans


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).float()


def test_each_conversation_attended_alone_gives_the_masked_rows_loss_and_gradients():
    """Two packed rows (conversations of 5, 4 and 3 tokens, then padding; one of 7 and one of 5): the loss and
    every gradient equal SDPA's over the block-diagonal mask transformers builds from the position ids."""
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 0, 0],
                              [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 0, 0]])
    ids = torch.randint(1, 64, positions.shape, generator=torch.Generator().manual_seed(1))
    labels = ids.masked_fill(positions == 0, -100)

    def loss_and_grads(model):
        model.zero_grad()
        loss = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss  # as training calls it
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    model = tiny_llama()
    masked = loss_and_grads(model)
    attend_per_conversation(model)
    assert model.config._attn_implementation == PER_CONVERSATION
    alone = loss_and_grads(model)
    assert torch.allclose(masked[0], alone[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(masked[1], alone[1]))


def test_what_is_not_a_packed_row_takes_the_sdpa_path():
    """Generation gives SDPA's tokens: its prompt is one conversation, each step after it a single query."""
    model = tiny_llama().eval()
    prompt = torch.randint(1, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    expected = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    attend_per_conversation(model)
    assert torch.equal(model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0), expected)
