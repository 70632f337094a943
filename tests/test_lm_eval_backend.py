"""`--model vist2` for lm-evaluation-harness on the tiny preset, offline: loglikelihood equals the plain
LLM (text) and the teacher-forced dense forward (gcc), generation honours until and max_gen_toks,
batching changes nothing, and lm-eval runs a local generate_until and a multiple-choice task."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import require_extra  # noqa: E402

require_extra("lm_eval")

from vist2.errors import Vist2Error  # noqa: E402
from vist2.generate import GenerationConfig, generate  # noqa: E402
from vist2.lm_eval import Vist2LM  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAIRS = [("The cat sat on the", " mat and slept."), ("Q: 2 + 2?\nA:", " 4"), ("", "Hello there")]


def requests(*args) -> list[SimpleNamespace]:
    return [SimpleNamespace(args=a) for a in args]


@pytest.fixture(scope="module")
def text_lm():
    return Vist2LM(preset="tiny", mode="text")


def test_text_loglikelihood_is_the_plain_llms(text_lm):
    model, tokenizer = text_lm.model, text_lm.tokenizer
    results = text_lm.loglikelihood(requests(*PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        context_ids = tokenizer.encode(context) if context else [tokenizer.eos_token_id]
        whole = context_ids + tokenizer.encode(continuation)
        with torch.inference_mode():
            logits = model.llm(input_ids=torch.tensor([whole])).logits[0, :, : len(tokenizer)].float()
        logprobs = logits.log_softmax(-1)[len(context_ids) - 1 : -1]
        target = torch.tensor(whole[len(context_ids) :])
        assert logprob == pytest.approx(float(logprobs.gather(1, target[:, None]).sum()), abs=1e-3)
        assert greedy == bool((logprobs.argmax(-1) == target).all())


def test_a_checkpoint_folder_scores_as_the_preset_it_was_saved_from(text_lm, tmp_path):
    text_lm.model.save_pretrained(tmp_path / "model", text_lm.tokenizer)
    from_folder = Vist2LM(path=str(tmp_path / "model"), mode="text")
    assert from_folder.loglikelihood(requests(*PAIRS)) == text_lm.loglikelihood(requests(*PAIRS))
    assert text_lm.loglikelihood(requests(("Some context", ""))) == [(0.0, True)]  # nothing to predict


def test_gcc_loglikelihood_is_the_teacher_forced_forward_and_batching_changes_nothing():
    from vist2.render import Renderer
    from vist2.verify import teacher_example, teacher_logits

    lm = Vist2LM(preset="tiny", mode="gcc", chunk_tokens=4, chat_template=True, batch_size=3)
    pairs = [("Question: what is on the mat?", " The cat, asleep."), ("Short", " ok then, twelve")]
    batched = lm.loglikelihood(requests(*pairs))
    lm.batch_size = 1
    one_by_one = lm.loglikelihood(requests(*pairs))
    assert [a for a, _ in one_by_one] == pytest.approx([b for b, _ in batched], abs=1e-4)
    assert [a for _, a in one_by_one] == [b for _, b in batched]
    renderer = Renderer(lm.model.config.render)
    for (context, continuation), (logprob, _) in zip(pairs, batched):
        query, response = lm.tokenizer.encode(context), lm.tokenizer.encode(continuation)
        example = teacher_example(lm.tokenizer, renderer, query, response, "gcc", 4, lm.options.beta,
                                  lm.options.visual_sees_text)
        logits = teacher_logits(lm.model, renderer, example, 0)[: len(response), : len(lm.tokenizer)]
        expected = logits.log_softmax(-1).gather(1, torch.tensor(response)[:, None]).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-3)
    text = Vist2LM(preset="tiny", mode="text", chat_template=True).loglikelihood(requests(*pairs))
    assert [round(a, 3) for a, _ in text] != [round(b, 3) for b, _ in batched]  # the chunks were compressed


def test_rolling_loglikelihood_scores_every_token_once(text_lm):
    string = "A rolling window scores every token exactly once."
    whole = text_lm.loglikelihood_rolling(requests((string,)))[0]
    single = text_lm.loglikelihood(requests(("", string)))[0][0]  # [eot] + the string, one window
    assert whole == pytest.approx(single, abs=1e-3)
    text_lm.max_length = 8  # now windows of 8 tokens: less context, every token still counted
    windowed = text_lm.loglikelihood_rolling(requests((string,)))[0]
    text_lm.max_length = text_lm.model.llm.config.max_position_embeddings
    assert windowed != pytest.approx(whole) and windowed < 0


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_generate_until_honours_until_and_max_gen_toks_in_each_mode(mode):
    lm = Vist2LM(preset="tiny", mode=mode, chunk_tokens=4, batch_size=2)
    prompts = ["Once upon a time", "The answer is", "Lists: a, b, c"]
    free = lm.generate_until(requests(*[(p, {"until": [], "max_gen_toks": 12}) for p in prompts]))
    for prompt, text in zip(prompts, free):
        config = GenerationConfig(mode=mode, max_new_tokens=12, chat_template=False)
        alone = generate(lm.model, lm.tokenizer, prompt, config, options=lm.options)
        assert text == alone.text and len(alone.token_ids) <= 12
    # an ASCII character each output holds (the byte tokenizer's outputs hold broken UTF-8 too)
    stops = [next((c for c in t[1:] if c.isascii()), "\n") for t in free]
    assert any(stop in text for stop, text in zip(stops, free))
    cut = lm.generate_until(requests(*[(p, {"until": s, "max_gen_toks": 12}) for p, s in zip(prompts, stops)]))
    for text, stop, whole in zip(cut, stops, free):
        assert stop not in text and whole.startswith(text)
    with pytest.raises(Vist2Error, match="num_beams"):
        lm.generate_until(requests(("hi", {"num_beams": 4})))


def test_bad_model_args_are_one_line_errors():
    with pytest.raises(Vist2Error, match="mode='fast'"):
        Vist2LM(preset="tiny", mode="fast")
    with pytest.raises(Vist2Error, match="pretrained"):
        Vist2LM(preset="tiny", pretrained="gpt2")
    with pytest.raises(Vist2Error, match="auto"):
        Vist2LM(preset="tiny", batch_size="auto")


def tasks(folder: Path) -> Path:
    """A generate_until and a multiple-choice task over tiny local JSONL files (no downloads)."""
    generation = [{"question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(3)]
    choices = [{"question": f"Colour {i}?", "choices": ["red apples", "blue sky", "green grass"], "label": i % 3}
               for i in range(3)]
    for name, rows in (("gen", generation), ("mc", choices)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: \"Q: {{question}}\\nA:\"\n"
        "doc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n"
        "metric_list:\n  - metric: exact_match\n")
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{question}} Answer:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n")
    return folder


def test_lm_eval_runs_local_tasks_with_vist2_in_gcc(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    result = lm_eval.simple_evaluate(model="vist2", model_args="preset=tiny,mode=gcc,chunk_tokens=4",
                                     tasks=["tiny_gen", "tiny_mc"], batch_size=2, log_samples=True,
                                     task_manager=TaskManager(include_path=str(tasks(tmp_path)), include_defaults=False))
    lm = Vist2LM(preset="tiny", mode="gcc", chunk_tokens=4)
    samples = result["samples"]["tiny_gen"]
    assert len(samples) == 3
    for sample in samples:  # what lm-eval logged is what the backend generates for that prompt
        context, gen_kwargs = sample["arguments"][0]
        assert sample["resps"][0][0] == lm.generate_until(requests((context, gen_kwargs)))[0]
        assert "\n" not in sample["resps"][0][0]
    correct = []
    for sample in result["samples"]["tiny_mc"]:  # acc: the choice of largest log-likelihood is the label
        pairs = [(f"{sample['doc']['question']} Answer:", f" {c}") for c in sample["doc"]["choices"]]
        scores = [logprob for logprob, _ in lm.loglikelihood(requests(*pairs))]
        correct.append(scores.index(max(scores)) == sample["doc"]["label"])
    assert result["results"]["tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    assert 0 <= result["results"]["tiny_gen"]["exact_match,none"] <= 1


@pytest.mark.slow
def test_readme_command_runs_lm_evals_cli(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    command = [sys.executable, "-m", "vist2.lm_eval", "--model", "vist2", "--model_args", "preset=tiny,mode=pcc",
               "--tasks", "tiny_gen", "tiny_mc", "--include_path", str(tasks(tmp_path)), "--batch_size", "2",
               "--output_path", str(tmp_path / "out")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tiny_mc" in run.stdout and "acc" in run.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))
    bad = subprocess.run([*command[:6], "preset=tiny,mode=fast", *command[7:]], env=env, capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 2 and "mode='fast'" in bad.stderr and "Traceback" not in bad.stderr
