"""Training data: readers for every format, bad input, the OCR curriculum, SFT labels, and
the resumable, rank-sharded sample order."""

import json
import random

import pytest
import torch
from PIL import Image

from vist2 import stages
from vist2.errors import Vist2Error
from vist2.presets import tiny
from vist2.render import Renderer
from vist2.tokenizer import byte_tokenizer
from vist2.train.config import TrainConfig
from vist2.train.data import (CaptionDataset, ChatDataset, ResumableBatches, build_dataset, curriculum_images,
                              read_records)

TOKENIZER = byte_tokenizer()
CONFIG = tiny()
BETA = CONFIG.visual_tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_reads_txt_folder_jsonl_parquet_and_saved_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "gamma"}, {"text": "delta"}])
    pq.write_table(pa.table({"text": ["epsilon"]}), tmp_path / "d.parquet")
    Dataset.from_dict({"text": ["zeta", "eta"]}).save_to_disk(str(tmp_path / "saved"))
    records = read_records((str(folder), str(tmp_path / "c.jsonl"), str(tmp_path / "d.parquet"),
                            str(tmp_path / "saved")))
    assert [r["text"] for r in records] == ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(Vist2Error, match="holds no"):
        read_records((str(tmp_path),))
    with pytest.raises(Vist2Error, match="does not exist"):
        read_records((str(tmp_path / "missing"),))


def test_invalid_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(Vist2Error, match=r"bad\.jsonl, line 3: not valid JSON"):
        read_records((str(path),))
    write_jsonl(path, [{"text": "ok"}, {"txt": "typo"}])
    with pytest.raises(Vist2Error, match=r"bad\.jsonl, line 2: needs a string field 'text'"):
        build_dataset("ocr", (str(path),), TOKENIZER, 64, BETA, 400)
    path.write_text('{"text": "ok"}\n{"text": "x", "weight": NaN}\n')
    with pytest.raises(Vist2Error, match=r"bad\.jsonl, line 2: not valid JSON \(NaN is not allowed\)"):
        read_records((str(path),))


def caption_records(tmp_path):
    Image.new("L", (40, 20), 200).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    rows = [{"image": "good.png", "caption": "a grey box"}, {"image": "missing.png", "caption": "x"},
            {"image": "corrupt.png", "caption": "y"}]
    return read_records((str(write_jsonl(tmp_path / "pairs.jsonl", rows)),))


def test_bad_caption_images_fail_or_are_skipped_with_a_count(tmp_path):
    records = caption_records(tmp_path)
    with pytest.raises(Vist2Error, match=r"pairs\.jsonl, line 2: image .*missing\.png is missing"):
        CaptionDataset(records, TOKENIZER, BETA, 1024, on_bad_image="fail")
    dataset = CaptionDataset(records, TOKENIZER, BETA, 1024, on_bad_image="skip")
    assert len(dataset) == 1 and len(dataset.skipped) == 2
    example = dataset[(0, 1)]
    assert isinstance(example.pages[0], Image.Image)
    caption = [i for i, keep in zip(example.ids, stages.L.loss_mask(example.layout)) if keep]
    assert TOKENIZER.decode(caption[:-1]) == "a grey box" and caption[-1] == TOKENIZER.eos_token_id


def test_ocr_curriculum_image_counts():
    rng = random.Random(0)
    bounds = (1 / 3, 2 / 3)
    assert {curriculum_images(0.1, rng, 8, bounds) for _ in range(50)} == {1}
    assert {curriculum_images(0.5, rng, 8, bounds) for _ in range(200)} == {2, 3, 4}
    assert {curriculum_images(0.9, rng, 8, bounds) for _ in range(200)} == {5, 6, 7, 8}
    assert {curriculum_images(0.9, rng, 3, bounds) for _ in range(50)} <= {2, 3}  # hard capped by max_length


def test_ocr_dataset_follows_the_curriculum_through_the_sampler(tmp_path):
    (tmp_path / "a.txt").write_text("one two three four five six seven " * 80)
    dataset = build_dataset("ocr", (str(tmp_path),), TOKENIZER, 64, BETA, max_length=8 * (64 + BETA))
    curriculum = lambda progress, rng: curriculum_images(progress, rng, dataset.max_images, (1 / 3, 2 / 3))  # noqa: E731
    sampler = ResumableBatches(len(dataset), 4, 4, 0, 1, seed=0, total_steps=9, curriculum=curriculum)
    counts = [[images for _, images in batch] for batch in sampler]
    assert all(c == 1 for batch in counts[:3] for c in batch)
    assert all(2 <= c <= 4 for batch in counts[3:6] for c in batch)
    assert all(5 <= c <= 8 for batch in counts[6:] for c in batch)
    index, images = next(iter(sampler))[0]
    assert sum(s.kind == "visual" for s in dataset[(index, 5)].layout) == 5


def test_olm_ocr_replay_mixes_in_ocr_samples_that_fit(tmp_path):
    (tmp_path / "a.txt").write_text("one two three four five six seven " * 200)
    max_length = 4 * 64 + 3 * BETA
    dataset = build_dataset("olm", (str(tmp_path),), TOKENIZER, 64, BETA, max_length, ocr_replay=0.5)
    examples = [dataset[(index, 1)] for index in range(len(dataset))]
    replayed = [e for e in examples if e.layout[0].kind == "visual"]  # OCR shows the page first
    assert 0.25 < len(replayed) / len(examples) < 0.75
    assert all(len(e.ids) <= max_length for e in examples)
    assert all(s.persistent for e in replayed for s in e.layout)
    assert [dataset[(i, 1)].ids for i in range(4)] == [e.ids for e in examples[:4]]  # fixed per window
    with pytest.raises(Vist2Error, match="ocr_replay"):
        TrainConfig(stage="ocr", data=("x",), output="y", preset="tiny", ocr_replay=0.5)


def test_sft_labels_cover_only_the_response():
    records = [{"query": "q" * 100, "response": "<think>why</think>the answer", "_where": "x"}]
    dataset = ChatDataset(records, TOKENIZER, chunk_tokens=64, beta=BETA, max_length=4096)
    example = dataset[(0, 1)]
    batch = stages.collate([example], Renderer(CONFIG.render), TOKENIZER.pad_token_id)
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert TOKENIZER.decode(labelled) == "<think>why</think>the answer<|im_end|>"
    assert "q" not in TOKENIZER.decode(labelled)


def test_sft_cuts_a_long_response_to_max_length():
    records = [{"query": "short", "response": "word " * 200, "_where": "x"}]
    example = ChatDataset(records, TOKENIZER, 64, BETA, max_length=300)[(0, 1)]
    assert len(example.ids) <= 300


def test_sampler_shards_ranks_and_resumes_at_any_step():
    def keys(rank, world, start=0):
        sampler = ResumableBatches(10, batch_size=4, micro_batch_size=1, rank=rank, world=world, seed=3,
                                   total_steps=5, start_step=start)
        return [key for batch in sampler for key in batch]

    single = keys(0, 1)
    two = [keys(0, 2), keys(1, 2)]
    assert sorted(two[0] + two[1]) == sorted(single)  # the ranks split each step, no overlap
    assert not set(two[0][:2]) & set(two[1][:2])
    assert keys(0, 1, start=2) == single[8:]  # resuming at step 2 continues the same order
    epoch_one = [index for index, _ in single[:10]]
    assert sorted(epoch_one) == list(range(10))  # each epoch is a permutation
    assert torch.tensor([index for index, _ in single[10:20]]).unique().numel() == 10
