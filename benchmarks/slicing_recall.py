"""Small-object recall of sliced inference vs single passes on large aerial frames.

    python benchmarks/slicing_recall.py --weights W.pt                  # synthetic 1536 px frames (default)
    python benchmarks/slicing_recall.py --data visdrone --weights W.pt --tile 320 --img 320 --big-img 1536
    python benchmarks/slicing_recall.py --data visdrone                 # tile + train yolov5n first, then evaluate

Frames: ``synthetic``: 1536 x 1536 frames, each a 4 x 4 mosaic of the project's synthetic 384 px scenes
(utils/data/synthetic.py, seeds never used by the training set), ground truth from the renderer;
``visdrone``: the shared sample's val + test-dev frames (960..2000 px wide), objects of categories 1..10.
"Small" = area < 32^2 original pixels. Recall = ground truths matched one-to-one by a detection
(IoU >= 0.5, highest confidence first), with at most --max-det detections per frame in every mode.
Modes: one pass at --img (the whole frame downscaled), one pass at --big-img, sliced --tile px tiles each
run at --img, and sliced plus a full-frame pass. Without --weights (visdrone only) a yolov5n is trained
with train.py on native-resolution tiles of the sample's train images. Writes
benchmarks/results/slicing_recall.json.
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import RESULTS_DIR, header_lines, write_json  # noqa: E402
from utils.boxes import box_iou  # noqa: E402
from utils.data.synthetic import make_image  # noqa: E402
from utils.data.visdrone import CATEGORY_NAMES, read_annotation  # noqa: E402
from utils.data.yolo_txt import LABEL_FORMAT, yolo_txt  # noqa: E402
from utils.infer.options import DetectOptions  # noqa: E402
from utils.infer.predictor import run as detect_run  # noqa: E402
from utils.infer.slicing import tile_grid  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("slicing_recall")
SAMPLE = REPO_ROOT.parent / "shared" / "data" / "visdrone-sample"
SMALL_AREA = 32 * 32  # COCO's "small": area below 32^2 pixels of the original image
MIN_VISIBLE = 0.5  # a box goes into a training tile when at least this fraction of its area lies inside
MATCH_IOU = 0.5
SYNTHETIC_SCENE, SYNTHETIC_GRID = 384, 4  # a synthetic frame = GRID x GRID scenes of SCENE px
SYNTHETIC_SEED = 2026  # differs from data/synthetic.yaml's seed 0: frames never seen in training


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("synthetic", "visdrone"), default="synthetic")
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames to render")
    parser.add_argument("--weights", default=None, help="evaluate this model instead of training one")
    parser.add_argument("--tile", type=int, default=384, help="tile size in frame pixels")
    parser.add_argument("--img", type=int, default=192, help="network size of the tiles and of the downscaled pass")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--big-img", type=int, default=768, help="network size of the large single pass")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--max-tiles", type=int, default=600, help="training tiles (random subset with objects)")
    parser.add_argument("--conf-thres", type=float, default=0.01)
    parser.add_argument("--max-det", type=int, default=500, help="VisDrone's limit per frame")
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "slicing_recall"))
    parser.add_argument("--out", default=str(RESULTS_DIR / "slicing_recall.json"))
    return parser.parse_args()


def sample_split(splits: set[str]) -> list[Path]:
    """Sample images of the given VisDrone splits (manifest.csv column ``visdrone_split``)."""
    with open(SAMPLE / "manifest.csv", newline="", encoding="utf-8") as f:
        return [SAMPLE / "images" / row["file"] for row in csv.DictReader(f) if row["visdrone_split"] in splits]


def tile_labels(boxes: np.ndarray, classes: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """Boxes (n, 4) xyxy frame pixels mostly inside a tile -> (m, 5) YOLO labels normalised to the tile."""
    x1, y1, x2, y2 = tile
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x1, x2) - x1
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y1, y2) - y1
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = inside >= MIN_VISIBLE * np.maximum(area, 1e-9)
    width, height = x2 - x1, y2 - y1
    kept = clipped[keep]
    centre_size = np.stack([(kept[:, 0] + kept[:, 2]) / 2 / width, (kept[:, 1] + kept[:, 3]) / 2 / height,
                            (kept[:, 2] - kept[:, 0]) / width, (kept[:, 3] - kept[:, 1]) / height], 1)
    return np.concatenate([classes[keep, None].astype(np.float64), centre_size], 1)  # (m, 5)


def write_tiles(images: list[Path], out_dir: Path, tile: int, overlap: float, max_tiles: int, seed: int) -> int:
    """Native-resolution tiles with objects and their YOLO labels under out_dir/{images,labels}."""
    candidates = []
    for image_path in images:
        annotation = read_annotation(SAMPLE / "annotations" / f"{image_path.stem}.txt")
        keep = annotation.object_mask
        height, width = cv2.imread(str(image_path)).shape[:2]
        for index, box in enumerate(tile_grid(height, width, tile, tile, overlap)):
            labels = tile_labels(annotation.boxes[keep], annotation.category[keep] - 1, box)
            if len(labels):
                candidates.append((image_path, index, box, labels))
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:max_tiles]
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    frames: dict[Path, np.ndarray] = {}
    for i in sorted(chosen):
        image_path, index, (x1, y1, x2, y2), labels = candidates[i]
        frame = frames.setdefault(image_path, cv2.imread(str(image_path)))
        cv2.imwrite(str(out_dir / "images" / f"{image_path.stem}_{index}.jpg"), frame[y1:y2, x1:x2])
        label_text = yolo_txt(labels[:, 0], labels[:, 1:], LABEL_FORMAT)
        (out_dir / "labels" / f"{image_path.stem}_{index}.txt").write_text(label_text)
    return len(chosen)


def train_model(args: argparse.Namespace, workdir: Path) -> Path:
    """Tile the sample's train images and train yolov5n on them with train.py; returns the weights."""
    data_dir = workdir / "tiles"
    counts = {split: write_tiles(sample_split(splits), data_dir / split, args.tile, args.overlap, limit, seed=0)
              for split, splits, limit in (("train", {"train"}, args.max_tiles), ("val", {"val", "test-dev"}, 100))}
    logger.info("training tiles: %s", counts)
    names = list(CATEGORY_NAMES[1:11])
    (workdir / "data.yaml").write_text(f"path: {data_dir}\ntrain: train/images\nval: val/images\nnc: 10\n"
                                       f"names: {names}\n")
    command = [sys.executable, "train.py", "--data", str(workdir / "data.yaml"), "--cfg", "models/yolov5n.yaml",
               "--img", str(args.img), "--epochs", str(args.epochs), "--batch-size", "16", "--workers", "0",
               "--noval", "--noplots", "--project", str(workdir), "--name", "train", "--exist-ok"]
    logger.info("%s", " ".join(command))
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    weights = workdir / "train" / "weights"
    return weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"


def match_counts(dets_xyxy: np.ndarray, dets_cls: np.ndarray, gt_xyxy: np.ndarray, gt_cls: np.ndarray,
                 class_aware: bool) -> np.ndarray:
    """(m,) bool: ground truths matched one-to-one, detections taken by decreasing confidence (input order)."""
    matched = np.zeros(len(gt_xyxy), dtype=bool)
    if not len(dets_xyxy) or not len(gt_xyxy):
        return matched
    ious = box_iou(torch.from_numpy(dets_xyxy).double(), torch.from_numpy(gt_xyxy).double()).numpy()  # (n, m)
    if class_aware:
        ious[dets_cls[:, None] != gt_cls[None, :]] = 0
    for row in ious:
        row = np.where(matched, 0.0, row)
        best = int(row.argmax())
        if row[best] >= MATCH_IOU:
            matched[best] = True
    return matched


def visdrone_frames() -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """(path, ground truth (m, 4) xyxy pixels, classes (m,)) of the sample's held-out frames."""
    frames = []
    for path in sample_split({"val", "test-dev"}):
        annotation = read_annotation(SAMPLE / "annotations" / f"{path.stem}.txt")
        keep = annotation.object_mask
        frames.append((path, annotation.boxes[keep], annotation.category[keep] - 1))
    return frames


def synthetic_frames(out_dir: Path, count: int) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """Render ``count`` large frames (mosaics of synthetic scenes) as PNG with their ground truth."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    for index in range(count):
        rng = np.random.default_rng([SYNTHETIC_SEED, index])
        size = SYNTHETIC_SCENE * SYNTHETIC_GRID
        frame = np.zeros((size, size, 3), np.uint8)
        boxes, classes = [], []
        for row in range(SYNTHETIC_GRID):
            for col in range(SYNTHETIC_GRID):
                scene, labels = make_image(SYNTHETIC_SCENE, rng)  # labels (n, 5) [class, x1, y1, x2, y2]
                y0, x0 = row * SYNTHETIC_SCENE, col * SYNTHETIC_SCENE
                frame[y0 : y0 + SYNTHETIC_SCENE, x0 : x0 + SYNTHETIC_SCENE] = scene
                boxes.append(labels[:, 1:] + [x0, y0, x0, y0])
                classes.append(labels[:, 0].astype(np.int64))
        path = out_dir / f"frame_{index:02d}.png"
        cv2.imwrite(str(path), frame)
        frames.append((path, np.concatenate(boxes).astype(np.float64), np.concatenate(classes)))
    return frames


def evaluate(weights: Path, frames: list[tuple[Path, np.ndarray, np.ndarray]], mode: dict,
             args: argparse.Namespace) -> dict:
    """Run one inference mode over the frames and count matched small / all ground truths."""
    totals = {key: 0 for key in ("small", "small_hit", "small_hit_cls", "all", "all_hit", "dets")}
    frame_list = Path(args.workdir) / "eval_frames.txt"
    frame_list.parent.mkdir(parents=True, exist_ok=True)
    frame_list.write_text("".join(f"{path}\n" for path, _, _ in frames))
    start = time.perf_counter()
    results = detect_run(DetectOptions(weights=str(weights), source=str(frame_list), conf_thres=args.conf_thres,
                                       max_det=args.max_det, nosave=True, project=str(Path(args.workdir) / "detect"),
                                       **mode))
    seconds = time.perf_counter() - start
    truth = {str(path): (boxes, classes) for path, boxes, classes in frames}
    for result in results:
        gt_boxes, gt_cls = truth[result.path]
        small = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]) < SMALL_AREA
        hit = match_counts(result.xyxy, result.cls, gt_boxes, gt_cls, class_aware=False)
        hit_cls = match_counts(result.xyxy, result.cls, gt_boxes, gt_cls, class_aware=True)
        totals["small"] += int(small.sum())
        totals["small_hit"] += int((hit & small).sum())
        totals["small_hit_cls"] += int((hit_cls & small).sum())
        totals["all"] += len(gt_boxes)
        totals["all_hit"] += int(hit.sum())
        totals["dets"] += len(result.conf)
    return {**mode, **totals, "frames": len(results),
            "small_recall": totals["small_hit"] / max(totals["small"], 1),
            "small_recall_class_aware": totals["small_hit_cls"] / max(totals["small"], 1),
            "all_recall": totals["all_hit"] / max(totals["all"], 1),
            "dets_per_frame": totals["dets"] / len(results), "seconds_per_frame": seconds / len(results)}


def main() -> None:
    setup_logging()
    args = parse_args()
    workdir = Path(args.workdir)
    if args.weights is None and args.data != "visdrone":
        raise ValueError("--data synthetic needs --weights (a model trained with train.py --data data/synthetic.yaml)")
    weights = Path(args.weights) if args.weights else train_model(args, workdir)
    frames = visdrone_frames() if args.data == "visdrone" else synthetic_frames(workdir / "frames", args.frames)
    sliced = {"imgsz": args.img, "slice": (args.tile, args.tile), "overlap": args.overlap}
    modes = {f"single pass --img {args.img} (downscaled frame)": {"imgsz": args.img},
             f"single pass --img {args.big_img}": {"imgsz": args.big_img},
             f"sliced {args.tile} px tiles at --img {args.img}, overlap {args.overlap}": sliced,
             "sliced + full-frame pass": {**sliced, "slice_full_pass": True}}
    frame_h, frame_w = cv2.imread(str(frames[0][0])).shape[:2]
    settings = {"weights": str(weights), "data": args.data, "frames": f"{len(frames)} frames, {frame_w}x{frame_h}",
                "tile": args.tile, "img": args.img, "big_img": args.big_img, "conf_thres": args.conf_thres,
                "max_det": args.max_det, "match_iou": MATCH_IOU}
    logging.getLogger("utils.infer.predictor").setLevel(logging.WARNING)
    logger.info("\n".join(header_lines(settings)))
    rows = []
    for label, mode in modes.items():
        rows.append({"mode": label, **evaluate(weights, frames, mode, args)})
        row = rows[-1]
        logger.info("%-52s small recall %.3f (class-aware %.3f) of %d, all recall %.3f, %.0f dets/frame, %.2f s/frame",
                    label, row["small_recall"], row["small_recall_class_aware"], row["small"], row["all_recall"],
                    row["dets_per_frame"], row["seconds_per_frame"])
    baseline, sliced = rows[0], rows[2]
    logger.info("sliced vs one downscaled pass: small objects found %d -> %d of %d (recall %.3f -> %.3f, %+.1f points)",
                baseline["small_hit"], sliced["small_hit"], sliced["small"], baseline["small_recall"],
                sliced["small_recall"], 100 * (sliced["small_recall"] - baseline["small_recall"]))
    write_json(Path(args.out), {"settings": settings, "header": header_lines(settings), "rows": rows})


if __name__ == "__main__":
    main()
