"""Training VIST2: the four paper stages (captioning, OCR, OLM, SFT) with Accelerate.

    from vist2.train import TrainConfig, train
    train(TrainConfig(stage="ocr", data=("corpus/",), output="runs/ocr", preset="tiny"))

Same as `vist2 train --stage ocr --data corpus/ --output runs/ocr --preset tiny`.
"""

from vist2.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    """`train` and `TrainResult` load torch and transformers: imported on first use, so the
    CLI can build its `train` parser from the config alone."""
    if name in ("train", "TrainResult"):
        from vist2.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'vist2.train' has no attribute {name!r}")
