"""Vist2Model: teacher-forced forward + backward of every stage layout, per-stage trainable
parameters, save/load round trip, clear errors for bad checkpoints, paper-size meta builds."""

import json

import pytest
import torch
from PIL import Image

from vist2 import layout as L
from vist2 import stages
from vist2.errors import Vist2Error
from vist2.model import Vist2Model, build_model
from vist2.presets import preset, tiny
from vist2.render import Renderer
from vist2.tokenizer import load_tokenizer
from vist2.train.config import STAGE_DEFAULTS
from vist2.train.loop import freeze

TEXT = "Attention costs grow with the square of the context; the KV cache grows linearly. " * 3


@pytest.fixture(scope="module")
def parts():
    config = tiny()
    torch.manual_seed(0)
    return Vist2Model(config), load_tokenizer(config.tokenizer), Renderer(config.render)


def stage_example(stage, tokenizer, config):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    K, beta, pad = config.chunk.chunk_tokens, config.visual_tokens, tokenizer.pad_token_id
    if stage == "captioning":
        return stages.captioning(Image.new("L", (40, 20), 200), ids[:30], beta, pad)
    if stage == "ocr":
        return stages.ocr(tokenizer, ids, K, beta, pad)
    if stage == "olm":
        return stages.olm(tokenizer, ids, K, beta, pad)
    return stages.sft(tokenizer, ids[:150], ids[150:], K, beta, pad)


@pytest.mark.parametrize("stage", ["captioning", "ocr", "olm", "sft"])
def test_stage_forward_backward_reaches_only_trainable_parameters(stage, parts):
    model, tokenizer, renderer = parts
    example = stage_example(stage, tokenizer, model.config)
    batch = stages.collate([example, example], renderer, tokenizer.pad_token_id)
    parts = STAGE_DEFAULTS[stage]["train_parts"]  # what `vist2 train` trains in this stage (paper table 7)
    freeze(model, parts)
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, part in model.parameter_groups().items():
        grads = [p.grad for p in part.parameters()]
        if name in parts:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), name


def test_loss_is_on_labelled_tokens_only(parts):
    model, tokenizer, renderer = parts
    example = stage_example("sft", tokenizer, model.config)
    batch = stages.collate([example], renderer, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    labels = batch["labels"][0, 1:]
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1][keep], labels[keep])
    assert torch.allclose(out.loss, expected)
    response = tokenizer.encode(TEXT, add_special_tokens=False)[150:] + stages.chat_parts(tokenizer)[2]
    assert batch["labels"][0][batch["labels"][0] != -100].tolist() == response


def test_padding_does_not_change_logits(parts):
    model, tokenizer, renderer = parts
    example = stage_example("olm", tokenizer, model.config)
    with torch.no_grad():
        alone = model(**stages.collate([example], renderer, tokenizer.pad_token_id)).logits
        padded = model(**stages.collate([example], renderer, tokenizer.pad_token_id, total=len(example.ids) + 7)).logits
    assert torch.allclose(alone[0], padded[0, : len(example.ids)], atol=1e-5)


def test_save_and_load_give_identical_logits(parts, tmp_path):
    model, tokenizer, renderer = parts
    batch = stages.collate([stage_example("olm", tokenizer, model.config)], renderer, tokenizer.pad_token_id)
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = Vist2Model.from_pretrained(tmp_path)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert load_tokenizer(reloaded.config.tokenizer).encode(TEXT) == tokenizer.encode(TEXT)


def test_checkpoint_errors_name_the_problem(parts, tmp_path):
    model, tokenizer, _ = parts
    with pytest.raises(Vist2Error, match="no config.json"):
        Vist2Model.from_pretrained(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(Vist2Error, match="not a vist2 checkpoint"):
        Vist2Model.from_pretrained(tmp_path / "other")

    model.save_pretrained(tmp_path / "corrupt")
    weights = tmp_path / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Vist2Error, match="corrupt"):
        Vist2Model.from_pretrained(tmp_path / "corrupt")

    model.save_pretrained(tmp_path / "mismatch")
    config = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    config["llm"]["params"]["hidden_size"] = 96
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(config))
    with pytest.raises(Vist2Error, match="does not belong to these weights"):
        Vist2Model.from_pretrained(tmp_path / "mismatch")

    (tmp_path / "mismatch" / "config.json").write_text("{not json")
    with pytest.raises(Vist2Error, match="not valid JSON"):
        Vist2Model.from_pretrained(tmp_path / "mismatch")


@pytest.mark.parametrize("changes", [
    {"aligner.kind": "mlp", "aligner.mlp_hidden": 48},
    {"aligner.merge": 2, "render.width": 128, "render.height": 64},
    {"chunk.bidirectional_visual": True},
])
def test_aligner_options_give_beta_tokens(changes):
    config = tiny().replace(**changes)
    model = Vist2Model(config)
    pages = Renderer(config.render).render_batch(["one page", "two pages"])
    tokens = model.encode_pages(pages)
    assert tokens.shape == (2, config.visual_tokens, model.llm.config.hidden_size)
    assert tokens.abs().max() <= 1 or config.aligner.kind == "mlp"  # tanh bound


def test_config_validation():
    with pytest.raises(Vist2Error, match="multiple"):
        tiny().replace(**{"render.width": 120})
    with pytest.raises(Vist2Error, match="square"):
        tiny().replace(**{"vision.model_type": "siglip_vision_model"})
    with pytest.raises(Vist2Error, match="unknown preset"):
        preset("vist2-70b")


@pytest.mark.parametrize("name, billions", [("vist2-0.6b", 0.6), ("vist2-8b", 8.2)])
def test_paper_presets_build_on_meta_device(name, billions):
    config = preset(name)
    with torch.device("meta"):
        model = Vist2Model(config)
    counts = model.num_parameters()
    assert config.visual_tokens == 256 and config.ratio == 4
    assert 0.29e9 < counts["vision"] < 0.32e9  # SigLIP2 ViT-L/16 without head
    assert abs(counts["llm"] / 1e9 - billions) < 0.25 * billions
    print(name, counts)


@pytest.mark.slow
def test_flex_attention_model_forward_equals_sdpa(parts):
    """The GPU path (FlexAttention + BlockMask) on the whole model; on CPU it runs forward only."""
    model, tokenizer, renderer = parts
    device = "cuda" if torch.cuda.is_available() else "cpu"
    flex = Vist2Model(model.config.replace(attn_implementation="flex_attention")).to(device).eval()
    flex.load_state_dict(model.state_dict())
    example = stage_example("olm", tokenizer, model.config)
    batch = stages.collate([example], renderer, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.eval()(**batch).logits
        batch = {name: value.to(device) for name, value in batch.items()}
        batch["attention_mask"] = L.block_mask([example.layout], device=device)
        assert torch.allclose(flex(**batch).logits.cpu(), expected, atol=1e-4)


def test_pretrained_parts_load_from_local_folders(tmp_path):
    """A user's own Qwen3 / SigLIP2 folders (here: tiny random ones) are loaded, not re-initialised."""
    from transformers import AutoConfig, AutoModelForCausalLM, Siglip2VisionConfig, Siglip2VisionModel

    config = tiny()
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **config.llm.params))
    vision = Siglip2VisionModel(Siglip2VisionConfig(**config.vision.params))
    llm.save_pretrained(tmp_path / "llm")
    vision.save_pretrained(tmp_path / "vision")
    model = Vist2Model(config.replace(**{"llm.path": str(tmp_path / "llm"), "vision.path": str(tmp_path / "vision")}))
    assert torch.equal(model.llm.model.embed_tokens.weight, llm.model.embed_tokens.weight)
    assert torch.equal(model.vision.model.embeddings.patch_embedding.weight,
                       vision.embeddings.patch_embedding.weight)


def test_smollm2_preset_wraps_the_real_pretrained_llm():
    """The packaged GGUF is converted once (cached), and the LLM inside knows things."""
    config = preset("smollm2-135m")
    model = Vist2Model(config).eval()
    tokenizer = load_tokenizer(config.tokenizer)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        answer = model.llm.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids.shape[1]:])
    assert 134e6 < model.num_parameters()["llm"] < 136e6


def test_build_model_seeded_fresh_or_from_a_folder(tmp_path):
    from vist2.tokenizer import byte_tokenizer

    def weights(model):
        return {name: tensor.clone() for name, tensor in model.state_dict().items()}

    first = build_model(config=tiny(), seed=5)
    assert not first.training
    same, other = weights(build_model(config=tiny(), seed=5)), weights(build_model(config=tiny(), seed=6))
    assert all(torch.equal(same[n], t) for n, t in first.state_dict().items())
    assert not all(torch.equal(other[n], t) for n, t in first.state_dict().items())
    first.save_pretrained(tmp_path / "m", byte_tokenizer())
    loaded = build_model(tmp_path / "m", changes={"chunk.chunk_tokens": 16})
    assert loaded.config.chunk.chunk_tokens == 16
    assert all(torch.equal(same[n], t) for n, t in loaded.state_dict().items())
    for both_or_neither in ({"folder": tmp_path / "m", "config": tiny()}, {}):
        with pytest.raises(Vist2Error, match="exactly one of a model folder or a config"):
            build_model(**both_or_neither)
