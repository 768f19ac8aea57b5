"""ValOptions: every val.py option, declared once (the CLI parser is generated from it) and validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from utils.eval.scoring import DEFAULT_PROTOCOL, PROTOCOLS, protocol_named
from utils.eval.validator import MERGE_MODES
from utils.files import REPO_ROOT
from utils.infer.options import (
    WEIGHTS_HELP,
    cbbl_fusion_option,
    exist_ok_option,
    overlap_option,
    runtime_option,
    slice_option,
)
from utils.infer.slicing import SliceRequest, parse_slice
from utils.options import option

TASKS = ("train", "val", "test", "speed", "study")
DEFAULT_PROJECT = str(REPO_ROOT / "runs" / "val")  # YOLOv5's runs/val, under the repository wherever val.py runs
DESCRIPTION = """Validate a detector: python val.py --weights best.pt --data VisDrone.yaml --img 1536 --task test

Also scores saved predictions without a model: python val.py --pred preds.json --gt gt.json (COCO JSON
files) or --pred results_dir --gt annotations_dir (VisDrone txt folders, the toolkit's rules)."""


@dataclass(frozen=True)
class ValOptions:
    """What one val.py run does; ``weights`` may be given as one path or several."""

    data: str = option("data/synthetic.yaml", "dataset YAML, bare names look in data/")
    weights: tuple[str, ...] = option((), WEIGHTS_HELP)
    batch_size: int = option(32, "images per batch", flags=("--batch",))
    imgsz: int = option(640, "inference size (pixels)", flags=("--img", "--img-size"))
    conf_thres: float = option(0.001, "confidence threshold")
    iou_thres: float = option(0.6, "NMS IoU threshold")
    max_det: Optional[int] = option(None, "per image; default 300 (yolov5, coco), 500 (visdrone)")
    task: str = option("val", "split to run, or speed / study", choices=TASKS)
    device: str = option("", "cuda device (0 or 0,1) or cpu")
    workers: int = option(8, "dataloader workers")
    single_cls: bool = option(False, "treat all classes as one")
    augment: bool = option(False, "test-time augmentation (3 scales x 2 flips)")
    verbose: bool = option(False, "per-class table")
    save_txt: bool = option(False, "labels/*.txt (VisDrone toolkit format under --protocol visdrone)")
    save_hybrid: bool = option(False, "txt of predictions + ground truth")
    save_conf: bool = option(False, "confidences in --save-txt labels")
    save_json: bool = option(False, "COCO JSON predictions + reference cross-check")
    project: str = option(DEFAULT_PROJECT, "save to project/name")
    name: str = option("exp", "save to project/name")
    exist_ok: bool = exist_ok_option()
    half: bool = option(False, "FP16 inference (CUDA); bfloat16 autocast on CPUs with AMX/AVX512-BF16")
    protocol: Optional[str] = option(None, f"metric: {DEFAULT_PROTOCOL} (default: YOLOv5 v7.0's val.py table), coco "
                                           "(pycocotools), visdrone (official toolkit); --pred JSON files imply "
                                           "coco, --pred folders visdrone", choices=tuple(PROTOCOLS))
    merge: str = option("nms", "how ensemble members are merged", choices=MERGE_MODES)
    pred: Optional[str] = option(None, "saved predictions: COCO JSON file or VisDrone txt folder")
    gt: Optional[str] = option(None, "ground truth: COCO JSON file or VisDrone annotations folder")
    images: Optional[str] = option(None, "VisDrone images folder (sizes for ignored regions)")
    noplots: bool = option(False, "save no plot files")
    slice: SliceRequest = slice_option("; the merged boxes are scored on the full frames")
    overlap: Optional[float] = overlap_option()
    slice_full_pass: bool = option(False, "with --slice, also detect on the whole frame at --img")
    runtime: str = runtime_option()
    cbbl_fusion: Optional[bool] = cbbl_fusion_option()

    def __post_init__(self) -> None:
        weights = [self.weights] if isinstance(self.weights, (str, Path)) else self.weights
        object.__setattr__(self, "weights", tuple(str(w) for w in weights))
        object.__setattr__(self, "project", str(self.project))
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r} unknown; expected one of {TASKS}")
        if self.protocol is not None:
            protocol_named(self.protocol)
        if (self.pred is None) != (self.gt is None):
            raise ValueError("--pred and --gt go together (saved predictions and their ground truth)")
        if self.pred is None and not self.weights:
            raise ValueError("give --weights (a model to run) or --pred/--gt (saved predictions to score)")
        if not (0 <= self.conf_thres <= 1 and 0 <= self.iou_thres <= 1):
            raise ValueError(f"--conf-thres {self.conf_thres} and --iou-thres {self.iou_thres} must lie in [0, 1]")
        object.__setattr__(self, "slice", parse_slice(self.slice))
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ValueError(f"--overlap must lie in [0, 1), got {self.overlap}")
        if self.max_det is not None and self.max_det < 1:
            raise ValueError(f"--max-det {self.max_det}: keep at least 1 detection per image (default: the protocol's)")
        if self.batch_size < 1 or self.imgsz < 32:
            raise ValueError(f"--batch-size {self.batch_size} must be >= 1 and --imgsz {self.imgsz} >= 32")
