"""Validate a detector: ``python val.py --weights best.pt --data data/VisDrone.yaml --img 1536 --task test``.

Also scores saved predictions without a model: ``python val.py --pred preds.json --gt gt.json`` (COCO
JSON files) or ``--pred results_dir --gt annotations_dir`` (VisDrone txt folders, the toolkit's rules).
Thin CLI: flags -> ValOptions -> run(); the work happens in utils/eval/validator.py and utils/eval/scoring.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from utils.eval.run import run_options
from utils.files import increment_path
from utils.log import setup_logging

logger = logging.getLogger("val")

TASKS = ("train", "val", "test", "speed", "study")


@dataclass(frozen=True)
class ValOptions:
    """Every val.py option, validated once at construction."""

    data: str = "data/synthetic.yaml"
    weights: tuple[str, ...] = ()
    batch_size: int = 32
    imgsz: int = 640
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: Optional[int] = None
    task: str = "val"
    device: str = ""
    workers: int = 8
    single_cls: bool = False
    augment: bool = False
    verbose: bool = False
    save_txt: bool = False
    save_hybrid: bool = False
    save_conf: bool = False
    save_json: bool = False
    project: str = "runs/val"
    name: str = "exp"
    exist_ok: bool = False
    half: bool = False
    protocol: Optional[str] = None
    merge: str = "nms"
    pred: Optional[str] = None
    gt: Optional[str] = None
    images: Optional[str] = None
    noplots: bool = False
    runtime: str = "torch"  # torch, or onnxruntime: a .pt runs through ONNX Runtime (faster on CPU)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r} unknown; expected one of {TASKS}")
        if self.protocol not in (None, "coco", "visdrone"):
            raise ValueError(f"--protocol {self.protocol!r} unknown; expected coco or visdrone")
        if (self.pred is None) != (self.gt is None):
            raise ValueError("--pred and --gt go together (saved predictions and their ground truth)")
        if self.pred is None and not self.weights:
            raise ValueError("give --weights (a model to run) or --pred/--gt (saved predictions to score)")
        if not (0 <= self.conf_thres <= 1 and 0 <= self.iou_thres <= 1):
            raise ValueError(f"--conf-thres {self.conf_thres} and --iou-thres {self.iou_thres} must lie in [0, 1]")
        if self.batch_size < 1 or self.imgsz < 32:
            raise ValueError(f"--batch-size {self.batch_size} must be >= 1 and --imgsz {self.imgsz} >= 32")


def parse_options(argv: Optional[Sequence[str]] = None) -> ValOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic.yaml", help="dataset YAML")
    parser.add_argument("--weights", nargs="+", default=[], help=".pt (several = ensemble), .onnx, .torchscript")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001)
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=None, help="per image; default 300 (coco), 500 (visdrone)")
    parser.add_argument("--task", default="val", choices=TASKS)
    parser.add_argument("--device", default="", help="cuda device (0 or 0,1) or cpu")
    parser.add_argument("--workers", type=int, default=8, help="dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat all classes as one")
    parser.add_argument("--augment", action="store_true", help="test-time augmentation (3 scales x 2 flips)")
    parser.add_argument("--verbose", action="store_true", help="per-class table")
    parser.add_argument("--save-txt", action="store_true", help="labels/*.txt (VisDrone toolkit format under "
                        "--protocol visdrone)")
    parser.add_argument("--save-hybrid", action="store_true", help="txt of predictions + ground truth")
    parser.add_argument("--save-conf", action="store_true", help="confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="COCO JSON predictions + reference cross-check")
    parser.add_argument("--project", default="runs/val")
    parser.add_argument("--name", default="exp")
    parser.add_argument("--exist-ok", action="store_true")
    parser.add_argument("--half", action="store_true", help="FP16 inference (CUDA)")
    parser.add_argument("--protocol", choices=("coco", "visdrone"), default=None, help="default coco; --pred "
                        "folders imply visdrone")
    parser.add_argument("--merge", choices=("nms", "wbf"), default="nms", help="how ensemble members are merged")
    parser.add_argument("--pred", default=None, help="saved predictions: COCO JSON file or VisDrone txt folder")
    parser.add_argument("--gt", default=None, help="ground truth: COCO JSON file or VisDrone annotations folder")
    parser.add_argument("--images", default=None, help="VisDrone images folder (sizes for ignored regions)")
    parser.add_argument("--noplots", action="store_true")
    args = vars(parser.parse_args(argv))
    args["weights"] = tuple(args["weights"])
    return ValOptions(**args)


def run(**opts: Any) -> Any:
    """val.py from Python: keyword arguments are ValOptions fields. Returns ValResults (a list for study)."""

    names = {f.name for f in fields(ValOptions)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise ValueError(f"unknown val options {unknown}; known: {sorted(names)}")
    if isinstance(opts.get("weights"), (str, Path)):
        opts["weights"] = (str(opts["weights"]),)
    options = ValOptions(**{**opts, "weights": tuple(str(w) for w in opts.get("weights", ()))})
    save_dir = increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok, mkdir=True)
    (save_dir / "options.json").write_text(json.dumps(asdict(options), indent=2))
    results = run_options(options, save_dir)
    logger.info("results saved to %s", save_dir)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_options(argv)
    setup_logging(-1)
    run(**asdict(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
