"""The reference side of speed_vs_yolov5.py: Ultralytics' YOLOv5 (PyPI ``yolov5``), run in its own venv.

Runs INSIDE the reference virtual environment and never imports our library (``utils``/``models`` here
would be theirs). Each task reads the shared inputs written by speed_vs_yolov5.py (same images and
targets) and prints one line ``RESULT_JSON: {...}`` with its timings.
Their models are built from their YAML with random weights (no download): same architecture.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

# The same timer, loader drain and GPU measurements as our side: both sides are measured by identical code.
# benchmarks/common.py needs only the standard library and torch; loaded by path, our repo root stays off sys.path.
_spec = importlib.util.spec_from_file_location("_bench_common", Path(__file__).with_name("common.py"))
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
time_call, drain_loader, RESULT_PREFIX = _common.time_call, _common.drain_loader, _common.RESULT_PREFIX


def _package_dir() -> Path:
    import yolov5

    return Path(yolov5.__file__).resolve().parent


def _hyp() -> dict:
    import yaml

    with open(_package_dir() / "data" / "hyps" / "hyp.scratch-low.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _build_model(cfg: str, nc: int):
    """Their Model from their YAML (random weights), with the hyps their ComputeLoss reads."""
    from yolov5.models.yolo import Model

    torch.manual_seed(0)
    model = Model(str(_package_dir() / "models" / f"{cfg}.yaml"), ch=3, nc=nc)
    model.hyp = _hyp()
    return model


def task_train_step(args: argparse.Namespace) -> dict:
    """Forward + loss + backward on the shared batch (train mode, fp32, CPU)."""
    from yolov5.utils.loss import ComputeLoss

    batch = torch.load(Path(args.inputs) / "train_batch.pt", weights_only=True)
    images = batch["images"].float() / 255  # (B, 3, H, W)
    targets = batch["targets"]  # (M, 6) [image, class, cx, cy, w, h] normalised
    model = _build_model(args.cfg, args.nc).train()
    criterion = ComputeLoss(model)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss, _ = criterion(model(images), targets)
        loss.backward()

    return time_call(step, args.warmup, args.repeats)


def task_infer(args: argparse.Namespace) -> dict:
    """Batch-1 latency per image size: eval mode, Conv+BN fused (their ``fuse()``), no grad."""
    model = _build_model(args.cfg, args.nc).fuse().eval()
    results = {}
    for size in args.sizes:
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            results[str(size)] = time_call(lambda image=image: model(image), args.warmup, args.repeats)
    return results


def task_dataloader(args: argparse.Namespace) -> dict:
    """Images per second through their mosaic training loader on the shared YOLO-format images."""
    from yolov5.utils.dataloaders import create_dataloader

    loader, dataset = create_dataloader(args.images, args.img, args.batch, 32, hyp=_hyp(), augment=True,
                                        cache=False, rect=False, workers=args.workers, shuffle=True, seed=0)
    return drain_loader(loader, args.batches)


def task_train_rss(args: argparse.Namespace) -> dict:
    """Peak resident memory of ``steps`` training steps (mosaic loader, SGD, fp32 CPU) in this fresh process."""
    from yolov5.utils.dataloaders import create_dataloader
    from yolov5.utils.loss import ComputeLoss

    loader, _ = create_dataloader(args.images, args.img, args.batch, 32, hyp=_hyp(), augment=True, cache=False,
                                  rect=False, workers=args.workers, shuffle=True, seed=0)
    model = _build_model(args.cfg, args.nc).train()
    criterion = ComputeLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    for index, (images, targets, _, _) in enumerate(loader):
        if index == args.steps:
            break
        loss, _ = criterion(model(images.float() / 255), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {"peak_rss_mb": _common.peak_rss_mb()}


def task_gpu(args: argparse.Namespace) -> dict:
    """gpu_check.py's rows for their model: AMP training steps per batch size, val and detect-b1 latency."""
    from yolov5.utils.general import non_max_suppression
    from yolov5.utils.loss import ComputeLoss

    torch.backends.cudnn.benchmark = True
    model = _build_model(args.cfg, args.nc).to(args.device)
    base = {"impl": "theirs (yolov5 PyPI)", "model": args.cfg, "head": "regress", "imgsz": args.img}
    return {"rows": _common.gpu_rows(model, ComputeLoss(model), non_max_suppression, base, args)}


TASKS = {"train_step": task_train_step, "infer": task_infer, "dataloader": task_dataloader,
         "train_rss": task_train_rss, "gpu": task_gpu}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--inputs", default="", help="folder of shared inputs written by speed_vs_yolov5.py")
    parser.add_argument("--cfg", default="yolov5s", help="their model YAML name (yolov5n, yolov5s, ...)")
    parser.add_argument("--nc", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640])
    parser.add_argument("--images", default="", help="YOLO-format image folder for the dataloader task")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--val-batch", type=int, default=16, help="gpu task: batch of the val rows")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3, help="training steps of the train_rss and gpu tasks")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 16], help="gpu task: batch sizes")
    parser.add_argument("--device", default="cpu", help="gpu task: torch device")
    parser.add_argument("--half", action="store_true", help="gpu task: fp16 inference")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("YOLOv5_VERBOSE", "False")
    result = {"task": args.task, "cfg": args.cfg, "torch_threads": torch.get_num_threads(), **TASKS[args.task](args)}
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
