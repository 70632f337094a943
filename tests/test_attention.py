"""The packed forward: many slots' new tokens in one row equal their own forwards; the model
is left as it was, and any other call inside `attention.packed` is SDPA."""

import torch

from vist2 import attention, decode
from vist2.kvstore import KVStore


def filled_store(model, lengths: list[int]) -> KVStore:
    """A store whose slots hold `lengths` entries, written by one whole-prompt forward each."""
    torch.manual_seed(0)
    store = KVStore(model.llm.config, model.device, model.dtype)
    store.add_slots([n + 40 for n in lengths])
    d = model.llm.config.hidden_size
    for slot, n in enumerate(lengths):
        decode.forward(model, store, [decode.Feed([slot], torch.randn(1, n, d), torch.arange(n)[None],
                                                  decode.new_tokens_mask(n, 1, False))])
    return store


@torch.inference_mode()
def test_one_packed_forward_equals_a_forward_per_slot(tiny):
    """Two decode tokens, a prompt piece and a visual block (bidirectional, hiding a chunk) of
    four slots at different lengths in one forward: the logits and KV entries of four forwards."""
    model, _ = tiny
    d = model.llm.config.hidden_size
    lengths = [7, 30, 12, 20]
    torch.manual_seed(1)
    tokens = decode.token_feed(model, [0, 1], [5, 9], [7, 30])
    feeds = [tokens,
             decode.Feed([2], torch.randn(1, 6, d), torch.arange(12, 18)[None], decode.new_tokens_mask(6, 1, False)),
             decode.Feed([3], torch.randn(1, 8, d), torch.arange(16, 24)[None], decode.new_tokens_mask(8, 4, True),
                         hide=[(16, 20)])]
    packed, alone = filled_store(model, lengths), filled_store(model, lengths)
    together = decode.forward(model, packed, feeds)
    one_by_one = [decode.Feed([slot], tokens.embeds[i : i + 1], tokens.positions[i : i + 1], decode.ONE)
                  for i, slot in enumerate(tokens.slots)] + feeds[1:]
    apart = torch.cat([decode.forward(model, alone, [feed]) for feed in one_by_one])
    assert (together - apart).abs().max() <= 1e-5
    assert packed.lengths == alone.lengths == [8, 31, 18, 28]
    for slot, n in enumerate(packed.lengths):
        assert torch.allclose(packed.keys[:, slot, :, :n], alone.keys[:, slot, :, :n], atol=1e-5)


@torch.inference_mode()
def test_the_model_is_left_as_it_was_and_other_calls_are_sdpa(tiny):
    """The engine's forwards switch attention for their own duration only; a padded batch run
    inside the switch (masks made by transformers) gives SDPA's logits."""
    model, _ = tiny
    llm = model.llm
    filled_store(model, [5])
    assert llm.config._attn_implementation == "sdpa"
    ids = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    expected = llm(input_ids=ids, attention_mask=mask).logits
    with attention.packed(llm):
        assert llm.config._attn_implementation == attention.NAME
        inside = llm(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(inside[0], expected[0], atol=1e-6)
    assert torch.allclose(inside[1, 2:], expected[1, 2:], atol=1e-6)  # padding positions aside


def test_engines_on_threads_sharing_a_model_keep_the_packed_attention_while_any_runs(tiny):
    """Two threads inside `packed` at once: the first to leave does not switch the other back."""
    import threading

    model, _ = tiny
    config = model.llm.config
    entered = threading.Barrier(3)
    leave = [threading.Event(), threading.Event()]

    def inside(index):
        with attention.packed(model.llm):
            entered.wait()
            leave[index].wait()

    threads = [threading.Thread(target=inside, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    entered.wait()
    leave[0].set()
    threads[0].join()
    assert config._attn_implementation == attention.NAME  # the second is still inside
    leave[1].set()
    threads[1].join()
    assert config._attn_implementation == "sdpa"
