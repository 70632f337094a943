"""Sampling fields on a batch of logits, checked against the formulas they implement, and
the engine's reported log-probabilities against the logits that chose each token."""

import torch

from vist2.engine import Engine
from vist2.generate import GenerationConfig
from vist2.sampling import adjust, sample, token_logprobs


def test_penalties_bias_and_min_p_follow_their_formulas():
    logits = torch.zeros(2, 6)
    config = GenerationConfig(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((4, 3.0),))
    out = adjust(logits, [[], [1]], config, generated=[[2, 2, 3], []])
    assert out[0].tolist() == [0, 0, -1.0, -0.75, 3.0, 0]  # 0.5 + 2 * 0.25 for the twice-seen 2
    assert out[1].tolist() == [0, 0, 0, 0, 3.0, 0]  # the prompt (history) is not penalised
    greedy = GenerationConfig(logit_bias=((5, 100.0),))
    assert sample(torch.randn(3, 6), [[], [], []], greedy, None).tolist() == [5, 5, 5]
    peaked = torch.tensor([[5.0, 4.0, 0.0, 0.0]])  # probabilities ~ .72 .26 .005 .005
    strict = GenerationConfig(temperature=1.0, min_p=0.5)
    drawn = {int(sample(peaked, [[]], strict, torch.Generator().manual_seed(i))[0]) for i in range(200)}
    assert drawn == {0}  # 0.26 < 0.5 * 0.72: only the likeliest survives
    drawn = {int(sample(peaked, [[]], GenerationConfig(temperature=1.0, min_p=0.3),
                        torch.Generator().manual_seed(i))[0]) for i in range(200)}
    assert drawn == {0, 1}


def test_engine_reports_the_log_softmax_of_the_choosing_logits(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer)
    config = GenerationConfig(mode="gcc", max_new_tokens=70, ignore_eos=True, logprobs=3)
    request = engine.add("hello there " * 8, config, keep_logits=True)
    reported = [pair for events in engine.run() for event in events for pair in event.logprobs]
    assert len(reported) == len(request.output) == len(request.kept) == 70
    for token, logits, (logprob, top) in zip(request.output, request.kept, reported):
        expected = torch.log_softmax(logits[: len(tokenizer)].float(), -1)
        assert abs(logprob - expected[token].item()) < 1e-6
        assert [i for i, _ in top] == expected.topk(3).indices.tolist() and top[0][0] == token  # greedy
    assert token_logprobs(torch.tensor([0.0, 0.0]), 1, 0) == (torch.log(torch.tensor(0.5)).item(), [])
