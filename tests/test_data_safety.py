"""Data files are untrusted: image paths stay in the data folder (unless opted out), only
regular, decodable files are opened, folder names with commas work, and an SFT chat that
cannot fit is skipped and counted with its file and line before training."""

import io
import os

import pytest
from PIL import Image

from test_data import BETA, TOKENIZER, write_jsonl
from vist2.errors import Vist2Error
from vist2.train.data import CaptionDataset, ChatDataset, read_records

pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 20), 200).save(folder / "good.png")
    rows = [{"image": "good.png", "caption": "ok"}] + [{"image": name, "caption": "x"} for name in images]
    return read_records((str(write_jsonl(folder / "pairs.jsonl", rows)),))


@pytest.mark.parametrize("escape", ["../secret.png", "ABSOLUTE"])
def test_image_paths_outside_the_data_folder_need_the_opt_out_flag(escape, tmp_path):
    Image.new("L", (40, 20), 0).save(tmp_path / "secret.png")
    name = str(tmp_path / "secret.png") if escape == "ABSOLUTE" else escape
    records = pairs(tmp_path / "data", [name])
    for on_bad in ("fail", "skip"):
        with pytest.raises(Vist2Error, match=r"pairs\.jsonl, line 2: image .* is outside the data folder .*"
                                             r"--images-outside-data"):
            CaptionDataset(records, TOKENIZER, BETA, 1024, on_bad)
    assert len(CaptionDataset(records, TOKENIZER, BETA, 1024, "fail", images_outside_data=True)) == 2


def test_fifos_folders_and_truncated_images_are_bad_images_not_hangs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "pipe.png")
    (data / "folder.png").mkdir()
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(jpeg, "JPEG")
    (data / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    records = pairs(data, ["pipe.png", "folder.png", "cut.jpg"])
    with pytest.raises(Vist2Error, match=r"line 2: image .*pipe\.png is missing or not a regular file"):
        CaptionDataset(records, TOKENIZER, BETA, 1024, "fail")
    dataset = CaptionDataset(records, TOKENIZER, BETA, 1024, "skip")
    assert len(dataset) == 1 and len(dataset.skipped) == 3
    assert "cut.jpg is not a readable image" in dataset.skipped[2]


def test_a_comma_in_the_folder_name_finds_the_right_image(tmp_path):
    records = pairs(tmp_path / "a,b", [])
    Image.new("L", (40, 20), 0).save(tmp_path / "good.png")  # what splitting at the comma would find
    dataset = CaptionDataset(records, TOKENIZER, BETA, 1024, "fail")
    assert dataset.pairs[0][0] == tmp_path / "a,b" / "good.png"


def test_sft_chats_whose_query_cannot_fit_are_skipped_with_file_and_line(tmp_path):
    rows = [{"query": "short", "response": "fine"}, {"query": "q" * 2000, "response": "lost"},
            {"query": "short", "response": "word " * 200}]
    records = read_records((str(write_jsonl(tmp_path / "chat.jsonl", rows)),))
    dataset = ChatDataset(records, TOKENIZER, 64, BETA, max_length=300)
    assert len(dataset) == 2 and len(dataset.skipped) == 1
    assert "chat.jsonl, line 2: the query alone (2000 tokens) exceeds max_length 300" in dataset.skipped[0]
    assert all(len(dataset[(i, 1)].ids) <= 300 for i in range(2))  # never dies mid-training, nor on resume
    rows[1]["response"] = ""
    records = read_records((str(write_jsonl(tmp_path / "chat.jsonl", rows)),))
    with pytest.raises(Vist2Error, match=r"chat\.jsonl, line 2: the response is empty"):
        ChatDataset(records, TOKENIZER, 64, BETA, max_length=300)
