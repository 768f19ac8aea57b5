"""What ``val.py`` runs: a model over a dataset split (tasks train/val/test/speed/study) or the scoring of
saved predictions (``--pred/--gt``), driven by :class:`utils.eval.options.ValOptions`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from utils.data.config import load_data_config
from utils.data.dataset import create_dataloader
from utils.data.visdrone import CATEGORY_NAMES
from utils.eval import coco as coco_eval
from utils.eval import visdrone as visdrone_eval
from utils.eval.metrics import BoxSet
from utils.eval.options import ValOptions
from utils.eval.plots import plot_study
from utils.eval.scoring import DEFAULT_PROTOCOL, plot_metrics, score_coco, score_visdrone
from utils.eval.validator import Slicing, ValResults, log_results, validate
from utils.files import atomic_write_text, increment_path, make_dirs, outermost_missing, remove_created_folder
from utils.infer.backend import DetectBackend
from utils.infer.runtime import check_input_memory, load_backend
from utils.infer.slicing import resolve_slice
from utils.torch_utils import round_to_stride, select_device

logger = logging.getLogger(__name__)

# --task speed: YOLOv5's operating point for timing runs.
SPEED_CONF, SPEED_IOU = 0.25, 0.45
STUDY_SIZES = tuple(range(256, 1536 + 128, 128))  # YOLOv5's study sizes
STUDY_COLUMNS = ("imgsz", "P", "R", "mAP50", "mAP50-95", "t_preprocess_ms", "t_inference_ms", "t_nms_ms")


def run(opts: ValOptions) -> ValResults | list[ValResults]:
    """What val.py does with its options (``val.run(**kwargs)`` builds them from keyword arguments).

    Checks the inputs, then makes the run folder (project/name, incremented), records the options in it and runs
    them. A run that fails removes the folders it made if they hold nothing but its options.json.
    """
    check_inputs(opts)
    save_dir = increment_path(Path(opts.project) / opts.name, exist_ok=opts.exist_ok)
    created = outermost_missing(save_dir)
    make_dirs(save_dir)
    options_file = atomic_write_text(save_dir / "options.json", json.dumps(asdict(opts), indent=2))
    try:
        results = run_options(opts, save_dir)
    except BaseException:
        remove_created_folder(created, [options_file])
        raise
    logger.info("results saved to %s", save_dir)
    return results


def check_inputs(opts: ValOptions) -> None:
    """Raise for a missing --weights file, --data YAML or split, or --pred/--gt, before a run folder is made."""
    if opts.pred is not None:
        _pred_format(opts)
        return
    for weights in opts.weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--weights {weights} not found")
    load_data_config(opts.data, splits=(_split(opts),))


def _split(opts: ValOptions) -> str:
    """The dataset split a model run reads: --task's, or val for speed and study."""
    return "val" if opts.task in ("speed", "study") else opts.task


def run_options(opts: ValOptions, save_dir: Path) -> ValResults | list[ValResults]:
    """Dispatch on the options: saved predictions, a size study, or one validation run."""
    if opts.pred is not None:
        return score_saved(opts, save_dir)
    if opts.task == "study":
        return run_study(opts, save_dir)
    if opts.task == "speed":
        opts = replace(opts, conf_thres=SPEED_CONF, iou_thres=SPEED_IOU, save_json=False, noplots=True)
    return run_model(opts, save_dir)


def run_model(opts: ValOptions, save_dir: Path, backend: Optional[DetectBackend] = None) -> ValResults:
    """Load the weights (DetectBackend, unless given: a study reuses one), build the split's loader and validate."""
    split = _split(opts)
    data = load_data_config(opts.data, splits=(split,))
    backend = backend or _backend(opts)
    if backend.nc != data["nc"] and not opts.single_cls:
        raise ValueError(f"{opts.weights[0]} predicts {backend.nc} classes but {opts.data} has {data['nc']}")
    exported = backend.fixed_imgsz is not None
    if exported and opts.imgsz != backend.fixed_imgsz[0]:
        logger.warning("%s was exported for fixed %dx%d inputs: --imgsz %d is ignored (export with --dynamic to "
                       "choose the size here)", opts.weights[0], *backend.fixed_imgsz, opts.imgsz)
    imgsz = backend.fixed_imgsz[0] if exported else round_to_stride(opts.imgsz, backend.stride)  # as train/detect
    check_input_memory(backend, (imgsz, imgsz), backend.fixed_batch or opts.batch_size)
    loader, _ = create_dataloader(data[split], imgsz, backend.fixed_batch or opts.batch_size, backend.stride,
                                  rect=not exported, pad=0.5, workers=opts.workers, single_cls=opts.single_cls,
                                  prefix=f"{split}: ")
    protocol = opts.protocol or DEFAULT_PROTOCOL
    slicing = _slicing(opts, imgsz, backend)
    fusion = backend.decode_side_variance(opts.cbbl_fusion)
    if fusion:  # the distributions' statistics only for the rows NMS can keep (the same kept boxes as dense)
        backend.decode_only_above(opts.conf_thres)
    return validate(backend, loader, data["names"], conf_thres=opts.conf_thres, iou_thres=opts.iou_thres,
                    max_det=opts.max_det, save_dir=save_dir, plots=not opts.noplots, verbose=opts.verbose,
                    protocol=protocol, augment=opts.augment, half=opts.half, single_cls=opts.single_cls,
                    save_txt=opts.save_txt, save_conf=opts.save_conf, save_json=opts.save_json,
                    save_hybrid=opts.save_hybrid, merge=opts.merge, weights_stem=Path(opts.weights[0]).stem,
                    slicing=slicing, batch_size=opts.batch_size, cbbl_fusion=fusion)


def _slicing(opts: ValOptions, imgsz: int, backend: DetectBackend) -> Optional[Slicing]:
    """--slice: tiles of the full-size frames, each at the network size (``auto``: a --tile checkpoint's training
    windows); None for whole-frame validation."""
    resolved = resolve_slice(opts.slice, opts.overlap, backend.trained_tile, backend.weights_name)
    if resolved is None:
        return None
    if backend.fixed_imgsz is not None:
        raise ValueError(f"--slice needs a model that takes any batch of tiles; {opts.weights[0]} was exported "
                         "with a fixed input shape: validate the .pt, or give --slice off")
    return Slicing(resolved[0], resolved[1], imgsz, opts.slice_full_pass)


def _backend(opts: ValOptions) -> DetectBackend:
    return load_backend(opts.weights, select_device(opts.device, opts.batch_size), opts.half, opts.runtime,
                        opts.cbbl_fusion)


def run_study(opts: ValOptions, save_dir: Path, sizes: Sequence[int] = STUDY_SIZES) -> list[ValResults]:
    """mAP and speed against image size (YOLOv5's --task study), the weights loaded once. After every size,
    study_<data>_<weights>.csv and study.png are rewritten, so an interrupted study keeps what it measured."""
    backend = _backend(opts)
    csv_path = save_dir / f"study_{Path(opts.data).stem}_{Path(opts.weights[0]).stem}.csv"
    lines, results = [",".join(STUDY_COLUMNS)], []
    for size in sizes:
        logger.info("study: --imgsz %d", size)
        result = run_model(replace(opts, imgsz=size, noplots=True, save_json=False, save_txt=False),
                           save_dir / f"imgsz{size}", backend)
        results.append(result)
        speed = result.speed_ms
        values = (size, result.precision, result.recall, result.map50, result.map50_95, speed["preprocess"],
                  speed["inference"], speed["nms"])
        lines.append(",".join(f"{value:.6g}" for value in values))
        atomic_write_text(csv_path, "\n".join(lines) + "\n")
        plot_study(csv_path, save_dir / "study.png")
    return results


def _pred_format(opts: ValOptions) -> str:
    """``coco`` for two JSON files, ``visdrone`` for two folders; a mismatch with --protocol is an error."""
    pred, gt = Path(opts.pred), Path(opts.gt)
    for path in (pred, gt):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found")
    if pred.is_file() and gt.is_file():
        kind = "coco"
    elif pred.is_dir() and gt.is_dir():
        kind = "visdrone"
    else:
        raise ValueError(f"--pred {pred} and --gt {gt} must both be COCO JSON files or both VisDrone txt folders")
    if opts.protocol not in (None, kind):
        raise ValueError(f"--protocol {opts.protocol} cannot score {'JSON files' if kind == 'coco' else 'folders'}; "
                         f"those are scored with the {kind} rules")
    return kind


def score_saved(opts: ValOptions, save_dir: Path) -> ValResults:
    """Score saved predictions against their ground truth (no model), log the table, write results."""
    protocol = _pred_format(opts)
    if protocol == "coco":
        gt = coco_eval.load_coco_gt(opts.gt)
        dets = coco_eval.load_coco_detections(opts.pred, gt.image_ids)
        index = np.searchsorted(gt.category_ids, dets.category).clip(0, max(len(gt.category_ids) - 1, 0))
        known = gt.category_ids[index] == dets.category if len(gt.category_ids) else np.zeros(len(dets), bool)
        report_unknown_categories(dets.category[~known], opts.pred, opts.gt)
        dets = BoxSet(dets.image, dets.boxes, np.where(known, index, -1), score=dets.score)
        gts = BoxSet(gt.boxes.image, gt.boxes.boxes, np.searchsorted(gt.category_ids, gt.boxes.category),
                     area=gt.boxes.area, ignore=gt.boxes.ignore)
        names = [gt.category_names[int(c)] for c in gt.category_ids]
        fields, curves = score_coco(dets, gts, names, gt.image_ids)
        num_images, num_instances = len(gt.image_ids), int((~gts.ignore).sum())
    else:
        dets, gts, image_ids, sizes = visdrone_eval.load_folders(opts.pred, opts.gt, opts.images)
        names = list(CATEGORY_NAMES[1:11])
        fields, curves = score_visdrone(dets, gts, names, image_ids, sizes)
        num_images, num_instances = len(image_ids), int(np.isin(gts.category, visdrone_eval.CLASSES).sum())
    results = ValResults(**fields, protocol=protocol)
    log_results(results, num_images, num_instances, True)
    if not opts.noplots:
        plot_metrics(curves, None, names, save_dir)
    atomic_write_text(save_dir / "results.json", json.dumps(results.as_dict(), indent=2))
    return results


def report_unknown_categories(unknown: np.ndarray, pred: Any, gt: Any) -> None:
    """Warn once about predictions whose category_id the GT does not define (they can only be false positives)."""
    if len(unknown):
        ids = sorted({int(c) for c in unknown})
        logger.warning("%s: %d prediction(s) have category_id %s, which %s does not define; they are ignored "
                       "(ids shifted by one, or predictions for another dataset?)", pred, len(unknown),
                       ids[:10] + (["..."] if len(ids) > 10 else []), gt)
