"""Training throughput (images/s) of the real training step for the CIoU and C-BBL box heads.

Times ``Trainer.train_step`` (forward, loss, backward; the optimizer step + EMA come every
``--nbs``/``--batch`` batches, as in training, so with few repeats they may fall outside the timed steps)
of a model YAML at --img on a fixed synthetic batch (uint8 images, --objects boxes per image,
log-uniform 4..120 px), modes interleaved round by round since the machine may be shared.
Data loading is not included. Prints the figures and writes benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py [--cfg models/yolov5s.yaml] [--img 640] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, write_json  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.engine.optim import accumulate_steps, build_optimizer  # noqa: E402
from utils.engine.trainer import Trainer  # noqa: E402
from utils.head import HeadConfig  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.loss import ComputeLoss, LossSettings  # noqa: E402
from utils.torch_utils import ModelEMA  # noqa: E402

logger = logging.getLogger("train_throughput")
MODES = ("ciou", "cbbl")


def synthetic_batch(batch: int, imgsz: int, objects: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (B, 3, S, S), targets (B*objects, 6) [image, class, cx, cy, w, h] normalised)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, imgsz, imgsz), dtype=torch.uint8, generator=generator)
    count = batch * objects
    sizes = torch.exp(torch.empty(count, 2).uniform_(math.log(4), math.log(120), generator=generator)) / imgsz
    centres = torch.rand(count, 2, generator=generator) * (1 - sizes) + sizes / 2
    image_index = torch.arange(batch).repeat_interleave(objects).float()
    classes = torch.randint(0, 10, (count,), generator=generator).float()
    return images, torch.cat([image_index[:, None], classes[:, None], centres, sizes], 1)


def make_trainer(cfg: str, mode: str, imgsz: int, batch: int, nbs: int) -> Trainer:
    hyp = load_hyp(None, box_loss=mode)
    torch.manual_seed(0)
    model = Model(cfg, nc=10, head=HeadConfig.from_hyp(hyp, imgsz))
    optimizer = build_optimizer(model, "SGD", hyp.lr0, hyp.momentum, hyp.weight_decay)
    criterion = ComputeLoss(model, LossSettings.from_hyp(hyp), imgsz=imgsz)
    return Trainer(model=model, loss_fn=criterion, optimizer=optimizer,
                   train_loader=[], device=torch.device("cpu"), epochs=1, ema=ModelEMA(model),
                   accumulate=accumulate_steps(batch, nbs), imgsz=imgsz)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="models/yolov5s.yaml")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--nbs", type=int, default=64)
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS_DIR / "train_throughput.json"))
    args = parser.parse_args(argv)
    setup_logging()
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    for line in header_lines(settings):
        logger.info(line)
    images, targets = synthetic_batch(args.batch, args.img, args.objects)
    trainers = {mode: make_trainer(args.cfg, mode, args.img, args.batch, args.nbs) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(args.repeats + 1):  # round 0 warms up and is discarded
        for mode, trainer in trainers.items():
            trainer.iteration = round_index
            start = time.perf_counter()
            trainer.train_step(images, targets, ["synthetic"] * args.batch)
            if round_index:
                times[mode].append(time.perf_counter() - start)
    results = {}
    for mode in MODES:
        median = statistics.median(times[mode])
        results[mode] = {"images_per_s": args.batch / median, "median_step_s": median, "min_step_s": min(times[mode]),
                         "max_step_s": max(times[mode])}
        logger.info("%-5s %6.2f images/s (median step %.2f s over %d steps, batch %d at %d px)", mode,
                    results[mode]["images_per_s"], median, args.repeats, args.batch, args.img)
    ratio = results["ciou"]["images_per_s"] / results["cbbl"]["images_per_s"]
    logger.info("cbbl step time / ciou step time: %.3f", ratio)
    payload = {"settings": settings, "header": header_lines(settings), "results": results, "cbbl_vs_ciou": ratio}
    logger.info("wrote %s", write_json(Path(args.out), payload))
    return payload


if __name__ == "__main__":
    main()
