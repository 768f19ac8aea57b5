"""Is channels-last worth it on this CPU? Our own model, contiguous vs channels-last, interleaved A/B rounds.

    python benchmarks/channels_last_ab.py --cfg yolov5n yolov5s --rounds 3

Batch-1 fused inference at each --sizes and a training step (forward + loss + backward, batch --batch at
--img), 1 thread. Ratio = channels-last / contiguous per round (< 1: channels-last faster); the library runs
channels-last on CPU (DetectBackend, Trainer) on the strength of this table. Writes
benchmarks/results/channels_last_ab.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, time_call, write_json  # noqa: E402
from benchmarks.speed_inputs import write_train_batch  # noqa: E402
from benchmarks.speed_vs_yolov5 import NUM_CLASSES, build_ours  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.loss import ComputeLoss, LossSettings  # noqa: E402

logger = logging.getLogger("benchmarks.channels_last_ab")
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def infer_seconds(cfg: str, box_loss: str, size: int, layout: torch.memory_format, args) -> float:
    model, _ = build_ours(cfg, box_loss, size)
    model = model.fuse().eval().to(memory_format=layout)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).contiguous(memory_format=layout)
    with torch.inference_mode():
        return time_call(lambda: model(image), args.warmup, args.repeats)["min_s"]


def train_seconds(cfg: str, box_loss: str, layout: torch.memory_format, batch: dict, args) -> float:
    model, hyp = build_ours(cfg, box_loss, args.img)
    criterion = ComputeLoss(model.train(), LossSettings.from_hyp(hyp), imgsz=args.img)
    model = model.to(memory_format=layout)
    images = (batch["images"].float() / 255).contiguous(memory_format=layout)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        criterion(model(images), batch["targets"])[0].backward()

    return time_call(step, args.warmup, args.repeats)["min_s"]


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="+", default=["yolov5n", "yolov5s"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1536])
    parser.add_argument("--img", type=int, default=640, help="training step image size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "channels_last_ab.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)


    with tempfile.TemporaryDirectory() as tmp:
        write_train_batch(Path(tmp), args.batch, args.img, NUM_CLASSES, np.random.default_rng(0))
        batch = torch.load(Path(tmp) / "train_batch.pt", weights_only=True)
    tasks = [(f"infer b1 {size}px", size) for size in args.sizes] + [(f"train_step b{args.batch} {args.img}px", 0)]
    rows = []
    for cfg in args.cfg:
        for box_loss in ("ciou", "cbbl"):
            for task, size in tasks:
                ratios = []
                for _ in range(args.rounds):
                    times = {name: infer_seconds(cfg, box_loss, size, layout, args) if size else
                             train_seconds(cfg, box_loss, layout, batch, args) for name, layout in LAYOUTS.items()}
                    ratios.append(times["channels_last"] / times["contiguous"])
                row = {"task": task, "model": cfg, "head": "cbbl" if box_loss == "cbbl" else "regress",
                       "ratio_median": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
                       "ratio_max": round(max(ratios), 3)}
                logger.info("%s", row)
                rows.append(row)
                write_json(args.out, {"header": header_lines(vars(args)), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
