"""bfloat16 on the CPU's matrix units (issue 25): speed of fp32 vs bf16 autocast, and what bf16 does to val mAP.

    python benchmarks/bf16_cpu.py --tasks speed --cfgs yolov5n yolov5s --rounds 3
    python benchmarks/bf16_cpu.py --tasks accuracy --weights runs/train/exp/weights/best.pt --data synthetic.yaml
    python benchmarks/bf16_cpu.py --tasks accuracy --weights ../shared/weights/yolov5n-coco-v6.1.pt \
        --coco-labels-of ../shared/data/visdrone-real/VisDrone2019-DET-val

speed: per model, a training step (Trainer.train_step: forward, loss, backward, SGD step; batch --batch at
--img) and batch-1 inference at --img through DetectBackend (detect.py's PyTorch path, ``--half`` for bf16), each
fp32 then bf16, interleaved: every round times both precisions back to back (their order alternating by round), so
a load change hits both. The ratio bf16 / fp32 is taken per round and its spread (min, median, max) printed.
One thread by default; the 1-minute load is recorded before and after (on a loaded machine the figures are
indicative). Random weights: speed does not depend on them.

accuracy: each --weights checkpoint validated twice with val.py's defaults (YOLOv5's metric, or --protocol), --half
off (fp32) and on (bf16 autocast, head and decode fp32), on each --data set; the differences are what bf16 changes.

Needs a CPU with native bf16 (amx_bf16 or avx512_bf16): elsewhere bf16 is emulated and this exits with a line.
Writes benchmarks/results/bf16_cpu_{speed,accuracy}.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NUM_CLASSES, RESULTS_DIR, environment, quiet_start, write_json  # noqa: E402
from utils.files import atomic_write_text  # noqa: E402
from utils.torch_utils import cpu_has_native_bf16  # noqa: E402

logger = logging.getLogger("benchmarks.bf16_cpu")
ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
TARGETS_PER_IMAGE = 20  # random boxes per training image, small objects as in VisDrone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["speed"], choices=("speed", "accuracy"))
    parser.add_argument("--cfgs", nargs="+", default=["yolov5n", "yolov5s"], help="models/<cfg>.yaml")
    parser.add_argument("--heads", nargs="+", default=["ciou"], choices=("ciou", "cbbl"), help="box loss")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--infer-repeats", type=int, default=3, help="inference calls per round (minimum kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", nargs="*", default=[], help="checkpoints for the accuracy task")
    parser.add_argument("--data", nargs="*", default=["synthetic.yaml"], help="dataset YAMLs for the accuracy task")
    parser.add_argument("--val-img", type=int, default=640, help="val.py --img for the accuracy task")
    parser.add_argument("--protocol", default=None, help="val.py --protocol (default: YOLOv5's; coco gives AP_small)")
    parser.add_argument("--coco-labels-of", default="", help="a VisDrone split folder (images/, annotations/): "
                        "validate on it with COCO class ids, for COCO-trained --weights (instead of --data)")
    parser.add_argument("--name", default="", help="suffix of the result files")
    return parser.parse_args(argv)


def train_step_fn(cfg: str, box_loss: str, imgsz: int, batch: int, amp: bool):
    """A Trainer (as train.py builds it on CPU, --amp on or off) and one of its training steps on a fixed batch."""
    from benchmarks.speed_vs_yolov5 import build_ours
    from utils.engine.trainer import Trainer
    from utils.loss import ComputeLoss, LossSettings

    model, hyp = build_ours(cfg, box_loss, imgsz)
    loss_fn = ComputeLoss(model.train(), LossSettings.from_hyp(hyp), imgsz=imgsz)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    trainer = Trainer(model=model, loss_fn=loss_fn, optimizer=optimizer, train_loader=[], device=torch.device("cpu"),
                      epochs=1, imgsz=imgsz, amp=amp)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, imgsz, imgsz), dtype=torch.uint8, generator=generator)
    count = batch * TARGETS_PER_IMAGE
    wh = torch.rand(count, 2, generator=generator) * 0.08 + 0.01
    targets = torch.cat([torch.arange(batch).repeat_interleave(TARGETS_PER_IMAGE)[:, None].float(),
                         torch.randint(0, NUM_CLASSES, (count, 1), generator=generator).float(),
                         torch.rand(count, 2, generator=generator) * 0.8 + 0.1, wh], 1)
    paths = [f"{index}.jpg" for index in range(batch)]
    trainer.model.train()

    def step() -> None:
        trainer.iteration += 1
        trainer.train_step(images, targets, paths)

    return step, trainer.amp


def infer_fn(cfg: str, box_loss: str, imgsz: int, half: bool, folder: Path):
    """detect.py's PyTorch path (fused, channels-last, sparse C-BBL decode at its --conf-thres) on one image."""
    from benchmarks.speed_vs_yolov5 import build_ours
    from utils.checkpoint import save_checkpoint
    from utils.infer.options import DetectOptions
    from utils.infer.runtime import load_backend

    path = folder / f"{cfg}_{box_loss}.pt"
    if not path.exists():
        model, _ = build_ours(cfg, box_loss, imgsz)
        save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml,
                         "names": [str(i) for i in range(NUM_CLASSES)], "epoch": 0}, path)
    backend = load_backend([str(path)], torch.device("cpu"), half=half)
    backend.decode_only_above(DetectOptions().conf_thres)
    image = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(imgsz))

    def infer() -> None:
        with torch.inference_mode():
            backend(image)

    return infer, backend.bf16


def seconds(fn, repeats: int = 1) -> float:
    """Smallest wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Interleaved fp32/bf16 rounds per (model, head, task); one row per (model, head, task)."""
    cases = []
    with tempfile.TemporaryDirectory(prefix="bf16_cpu_") as folder:
        for cfg in args.cfgs:
            for head in args.heads:
                train = {p: train_step_fn(cfg, head, args.img, args.batch, amp=p == "bf16") for p in PRECISIONS}
                infer = {p: infer_fn(cfg, head, args.img, p == "bf16", Path(folder)) for p in PRECISIONS}
                for task, fns, repeats in (("train_step", train, 1), ("infer", infer, args.infer_repeats)):
                    if not fns["bf16"][1]:
                        raise SystemExit(f"{cfg} {head} {task}: bf16 was not enabled (AMP check failed?)")
                    for precision in PRECISIONS:  # warm-up: lazy init, oneDNN kernel choice
                        fns[precision][0]()
                    cases.append({"cfg": cfg, "head": head, "task": task, "fns": fns, "repeats": repeats,
                                  "times": {p: [] for p in PRECISIONS}})
        for round_index in range(args.rounds):
            order = PRECISIONS if round_index % 2 == 0 else PRECISIONS[::-1]
            for case in cases:
                for precision in order:
                    case["times"][precision].append(seconds(case["fns"][precision][0], case["repeats"]))
            logger.info("round %d/%d done (load %.2f)", round_index + 1, args.rounds, os.getloadavg()[0])
    rows = []
    for case in cases:
        fp32, bf16 = case["times"]["fp32"], case["times"]["bf16"]
        rows.append({"cfg": case["cfg"], "head": case["head"], "task": case["task"],
                     "size": args.img, "batch": args.batch if case["task"] == "train_step" else 1,
                     "fp32_s": spread(fp32), "bf16_s": spread(bf16),
                     "ratio_bf16_fp32": spread([b / f for b, f in zip(bf16, fp32)]), "rounds": args.rounds})
    return rows


def speed_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | head | task | fp32 s (median, min-max) | bf16 s (median, min-max) | bf16/fp32 median "
             "(min-max over rounds) |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[key]['median']:.3f} ({row[key]['min']:.3f}-{row[key]['max']:.3f})"
                 for key in ("fp32_s", "bf16_s", "ratio_bf16_fp32")]
        task = f"{row['task']} b{row['batch']} {row['size']}"
        lines.append(f"| {row['cfg']} | {row['head']} | {task} | " + " | ".join(cells) + " |")
    return lines


def run_accuracy(args: argparse.Namespace) -> list[dict[str, Any]]:
    """val.py defaults per (checkpoint, dataset), fp32 then bf16; the figures and their differences."""
    import val

    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16_val_") as folder:
        datasets = [coco_labelled(Path(args.coco_labels_of), args.weights[0], Path(folder) / "coco")] \
            if args.coco_labels_of else args.data
        for weights in args.weights:
            for data in datasets:
                figures = {}
                for precision in PRECISIONS:
                    start = time.perf_counter()
                    result = val.run(weights=[weights], data=data, imgsz=args.val_img, device="cpu", workers=0,
                                     half=precision == "bf16", protocol=args.protocol, project=folder, name="val",
                                     noplots=True)
                    figures[precision] = {"map50": result.map50, "map50_95": result.map50_95,
                                          "ap_small": result.ap_small, "precision": result.precision,
                                          "recall": result.recall, "seconds": time.perf_counter() - start}
                delta = {key: figures["bf16"][key] - figures["fp32"][key]
                         for key in ("map50", "map50_95", "ap_small", "precision", "recall")}
                rows.append({"weights": str(weights), "data": str(data), "imgsz": args.val_img, **figures,
                             "bf16_minus_fp32": delta})
                logger.info("%s on %s: mAP50 %.4f -> %.4f, mAP50-95 %.4f -> %.4f", weights, data,
                            figures["fp32"]["map50"], figures["bf16"]["map50"], figures["fp32"]["map50_95"],
                            figures["bf16"]["map50_95"])
    return rows


def coco_labelled(split: Path, weights: str, folder: Path) -> str:
    """A dataset YAML for a VisDrone split with COCO class ids (tests/fixtures/make_yolov5_metrics.py's mapping),
    named as the COCO model ``weights`` names its classes; images linked, labels written under ``folder``."""
    import yaml

    from tests.fixtures.make_yolov5_metrics import write_coco_labels
    from utils.infer.backend import DetectBackend

    write_coco_labels(split, folder)
    names = DetectBackend(weights, fuse=False).names
    path = folder / "coco_labels.yaml"
    atomic_write_text(path, yaml.safe_dump({"path": str(folder), "train": "images", "val": "images",
                                            "nc": len(names), "names": names}))
    return str(path)


def accuracy_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| weights | data | fp32 mAP50 | bf16 mAP50 | fp32 mAP50-95 | bf16 mAP50-95 | fp32 AP_small | "
             "bf16 AP_small | d mAP50 | d mAP50-95 | d AP_small |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fp32, bf16, delta = row["fp32"], row["bf16"], row["bf16_minus_fp32"]
        figures = [f"{side[key]:.4f}" for key in ("map50", "map50_95", "ap_small") for side in (fp32, bf16)]
        changes = [f"{delta[key]:+.4f}" for key in ("map50", "map50_95", "ap_small")]
        lines.append(f"| {row['weights']} | {row['data']} | " + " | ".join(figures + changes) + " |")
    return [*lines, "", "(-1: undefined under the protocol; YOLOv5's val table has no AP_small, --protocol coco does)"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_start(logger, args.threads)
    if not cpu_has_native_bf16():
        raise SystemExit("this CPU has no native bfloat16 (amx_bf16/avx512_bf16): bf16 would be emulated; nothing "
                         "to measure")
    RESULTS_DIR.mkdir(exist_ok=True)
    suffix = f"_{args.name}" if args.name else ""
    for task in args.tasks:
        before = environment()
        rows = run_speed(args) if task == "speed" else run_accuracy(args)
        after_load = [round(x, 2) for x in os.getloadavg()]
        header = {**before, "load_after_1_5_15": after_load, "settings": {k: v for k, v in vars(args).items()}}
        lines = speed_table(rows) if task == "speed" else accuracy_table(rows)
        text = "\n".join([f"# bf16 vs fp32 on CPU: {task}", "", "```", json.dumps(header, indent=1), "```", "",
                          *lines, ""])
        write_json(RESULTS_DIR / f"bf16_cpu_{task}{suffix}.json", {"environment": header, "rows": rows})
        atomic_write_text(RESULTS_DIR / f"bf16_cpu_{task}{suffix}.md", text)
        print(text)


if __name__ == "__main__":
    main()
