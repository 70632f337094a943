"""The engine: requests that join a running batch late, in every mode, give the single-prompt
results; rows at different chunk phases still equal the teacher-forced forward; cancel and
max_batch; the page rule never drops query or response text; chunked prefill equals whole
prefill and lets running rows decode while a long prompt goes in; finish reasons."""

import pytest
import torch

from vist2.engine import Engine
from vist2.errors import Vist2Error
from vist2.generate import GenerationConfig, generate
from vist2.options import chunk_options
from vist2.prompt import build_prompt, chat_parts, chunk_pages, split_page
from vist2.render import Renderer
from vist2.verify import teacher_example, teacher_logits

SHORT, LONG = "Hi.", "Summarise the following notes, please. " * 3


def greedy(mode, n, **options):
    return GenerationConfig(mode=mode, max_new_tokens=n, ignore_eos=True, **options)


def test_late_joiners_in_every_mode_equal_single_prompts(tiny):
    model, tokenizer = tiny
    options = chunk_options(model, chunk_tokens=16)  # several chunks, at different phases per row
    early = [(SHORT, greedy("gcc", 50)), (LONG, greedy("text", 40)), (LONG, greedy("pcc", 45, temperature=1.0, seed=2))]
    late = [(LONG, greedy("gcc", 45)), (SHORT, greedy("pcc", 30)), (SHORT, greedy("text", 30))]
    engine = Engine(model, tokenizer, options=options)
    requests = [engine.add(prompt, config) for prompt, config in early]
    for _ in range(7):
        engine.step()
    requests += [engine.add(prompt, config) for prompt, config in late]
    for _ in engine.run():
        pass
    assert engine.kv.lengths == [] and engine.kv.nbytes() == 0
    for request, (prompt, config) in zip(requests, early + late):
        single = generate(model, tokenizer, prompt, config, options=options)
        assert request.result(tokenizer).token_ids == single.token_ids, (prompt, config.mode)
        assert request.stats.kv_tokens_peak == single.stats.kv_tokens_peak
        assert request.stats.chunks_compressed == single.stats.chunks_compressed


def test_rows_at_different_chunk_phases_equal_the_teacher_forced_forward(tiny):
    model, tokenizer = tiny
    renderer = Renderer(model.config.render)
    end = chat_parts(tokenizer)[2]
    engine = Engine(model, tokenizer, renderer, chunk_options(model, renderer, chunk_tokens=20))
    cases = [(list(b"first query " * 3), list(b"a response " * 5), True, 0),
             (list(b"second " * 4), list(b"another one " * 4), False, 7),
             (list(b"third query, longer " * 3), list(b"x y z " * 9), True, 13)]
    requests, step = [None] * len(cases), 0
    while step == 0 or engine.busy:
        for index, (query, response, sees_text, join) in enumerate(cases):
            if join == step:
                options = chunk_options(model, renderer, chunk_tokens=20, visual_sees_text=sees_text)
                requests[index] = engine.add(query, greedy("gcc", len(response + end)), options,
                                             forced=response + end, keep_logits=True)
        engine.step()
        step += 1
    for request, (query, response, sees_text, _) in zip(requests, cases):
        example = teacher_example(tokenizer, renderer, query, response, "gcc", 20, 16, sees_text)
        expected = teacher_logits(model, renderer, example, pad_id=0)
        assert request.stats.chunks_compressed >= 2
        assert (torch.stack(request.kept) - expected).abs().max() <= 1e-4


def test_cancel_frees_the_row_and_max_batch_queues(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_batch=2)
    a, b, c = (engine.add(prompt, greedy("gcc", 20)) for prompt in (SHORT, LONG, SHORT))
    engine.step()
    assert engine.rows == [a, b] and engine.waiting == [c]
    d = engine.add(LONG, greedy("text", 20))
    engine.cancel(a)
    engine.cancel(d)  # still waiting: it never runs
    events = engine.step()
    assert any(e.request is a and e.finished for e in events) and a not in engine.rows and c in engine.rows
    assert any(e.request is d and e.finished for e in events) and d.output == [] and not engine.waiting
    assert a.result(tokenizer).token_ids and len(a.output) < 20
    for _ in engine.run():
        pass
    assert len(b.output) == len(c.output) == 20 and engine.kv.nbytes() == 0
    assert [r.finish_reason for r in (a, b, c, d)] == ["cancelled", "length", "length", "cancelled"]


def test_finish_reasons_come_from_the_request(tiny):
    """An aborted request reports its reason (not "stop" from its length); a stop string gives
    "stop", max_new_tokens "length"; cancelling a finished request changes nothing."""
    from vist2.request import Status

    model, tokenizer = tiny
    text = generate(model, tokenizer, SHORT, greedy("text", 12)).text
    engine = Engine(model, tokenizer)
    aborted = engine.add(LONG, greedy("gcc", 30))
    stopped = engine.add(SHORT, greedy("text", 12, stop_strings=(text[3:6],)))
    assert aborted.status is Status.WAITING and aborted.slot is None
    engine.step()
    assert aborted.status is Status.RUNNING and aborted.slot is not None
    engine.cancel(aborted, "aborted")
    engine.step()
    assert aborted.status is Status.FINISHED and aborted.slot is None and len(aborted.output) == 1
    assert aborted.result(tokenizer).finish_reason == "aborted"
    for _ in engine.run():
        pass
    assert stopped.finish_reason == "stop" and len(stopped.output) < 12
    assert generate(model, tokenizer, SHORT, greedy("pcc", 5)).finish_reason == "length"
    engine.cancel(aborted, "cancelled")
    engine.step()
    assert aborted.finish_reason == "aborted"


def test_page_rule_never_drops_text(tiny):
    _, tokenizer = tiny
    renderer = Renderer(tiny[0].config.render)  # 128 x 32: three lines at the smallest size
    wide = "name\tvalue\tunit\tnote\t" * 4
    pages = split_page(wide, renderer.fits)
    assert len(pages) > 1 and "".join(pages) == wide and all(map(renderer.fits, pages))
    assert chunk_pages("a\nb\nc\nd\ne", renderer.fits) == ["a b c d e"]  # line breaks as spaces
    assert chunk_pages("short", renderer.fits) == ["short"]
    query = tokenizer.encode(wide * 3, add_special_tokens=False)
    prompt = build_prompt(tokenizer, query, "pcc", 64, 16, renderer.fits)
    compressed = len(query) - sum(len(ids) for kind, ids in prompt.segments if kind == "text") + len(
        chat_parts(tokenizer)[0] + chat_parts(tokenizer)[1])
    assert "".join(prompt.pages) == tokenizer.decode(query[:compressed])  # the whole query, over more pages
    assert prompt.chunks_split == 3 and prompt.positions == len(chat_parts(tokenizer)[0]) + len(prompt.pages) * 16 + (
        len(query) - compressed) + len(chat_parts(tokenizer)[1])


def test_generation_counts_query_chunks_spread_over_pages(tiny):
    model, tokenizer = tiny
    result = generate(model, tokenizer, "name\tvalue\tunit\tnote\t" * 12, greedy("pcc", 5))
    assert result.stats.chunks_split == 3 and result.stats.generated_tokens == 5


def test_whole_prompt_prefill_equals_the_piecewise_prefill(tiny, monkeypatch):
    """Several prompts padded into one forward give each row the logits of its prompt fed in
    pieces of K tokens and page batches (the path of prompts over PREFILL_TOKENS)."""
    from vist2 import decode

    model, tokenizer = tiny
    prompts = [SHORT, LONG, LONG * 2]

    def first_logits(options):
        engine = Engine(model, tokenizer, options=options)
        requests = [engine.add(p, greedy(mode, 1), keep_logits=True) for p in prompts for mode in ("text", "gcc")]
        engine.step()
        assert all(r.finished for r in requests)
        return torch.stack([r.kept[0] for r in requests])

    for bidirectional in (False, True):
        options = chunk_options(model, chunk_tokens=16, bidirectional_visual=bidirectional)
        whole = first_logits(options)
        monkeypatch.setattr(decode, "PREFILL_TOKENS", 0)
        pieces = first_logits(options)
        monkeypatch.undo()
        assert (whole - pieces).abs().max() <= 1e-4


def test_chunked_prefill_equals_whole_prefill(tiny):
    """Prompts fed a few positions per step (pieces cut anywhere in text, pages one or a few
    at a time) give the tokens and logits of whole prefill, in every mode."""
    model, tokenizer = tiny
    options = chunk_options(model, chunk_tokens=16)

    def run(budget):
        engine = Engine(model, tokenizer, options=options, prefill_tokens=budget)
        requests = [engine.add(prompt, greedy(mode, 20), keep_logits=True)
                    for prompt in (LONG * 4, SHORT) for mode in ("text", "pcc", "gcc")]
        for _ in engine.run():
            pass
        return requests

    whole = run(None)
    for budget in (5, 40):
        for a, b in zip(whole, run(budget)):
            assert a.output == b.output, (a.config.mode, budget)
            assert (torch.stack(a.kept) - torch.stack(b.kept)).abs().max() <= 1e-4


def test_a_long_prompt_joins_without_stalling_running_rows(tiny):
    """With a prefill budget a running row gets a token every step while a long prompt goes in,
    its pieces in the same forward as the decode tokens; a request cancelled between pieces of its prompt leaves at the next step."""
    from vist2.request import Status

    model, tokenizer = tiny
    engine = Engine(model, tokenizer, prefill_tokens=32)
    running = engine.add(SHORT, greedy("text", 300))
    while not running.output:  # its prompt goes in with the step's decode tokens: a token the step after
        engine.step()
    joining = engine.add(LONG * 8, greedy("text", 5))
    steps = 0
    while joining.status is not Status.RUNNING:
        engine.step()
        steps += 1
        assert len(running.output) == 1 + steps  # one token per step, prefill or not
    assert steps == -(-joining.prompt.positions // 32)
    late = engine.add(LONG * 8, greedy("text", 5))
    engine.step()
    assert late.status is Status.PREFILL and engine.kv.lengths[late.slot] == 32
    engine.cancel(late)
    engine.step()
    assert late.finish_reason == "cancelled" and late not in engine.rows and late.slot is None
    for _ in engine.run():
        pass
    assert running.finish_reason == joining.finish_reason == "length"


def test_prefill_budget_is_checked(tiny):
    model, tokenizer = tiny
    for bad in (0, -1, 2.5, True):
        with pytest.raises(Vist2Error, match="prefill_tokens must be a positive integer"):
            Engine(model, tokenizer, prefill_tokens=bad)
