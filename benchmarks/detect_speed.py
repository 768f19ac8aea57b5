"""Detection latency per drone frame on this machine: single pass at --img vs sliced inference, for yolov5s
(regression and C-BBL heads) and the small TPH variant, plus the share of latency the C-BBL decode adds.

    python benchmarks/detect_speed.py                      # 1536 px, 640 px tiles, all four models
    python benchmarks/detect_speed.py --repeats 1 --models yolov5s:cbbl

Latency is end to end per frame as detect.py runs it (letterbox, forward, NMS, mapping back; tiles batched),
with randomly initialised weights (speed does not depend on the weights; the YOLOv5 objectness prior keeps
the NMS candidates few, as with a trained model). Writes benchmarks/results/detect_speed.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, time_call, write_json  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.infer.backend import DetectBackend  # noqa: E402
from utils.infer.predictor import DetectOptions, detect_images, network_batch  # noqa: E402
from utils.infer.slicing import sliced_detect, tile_grid  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("detect_speed")
DEFAULT_FRAME = Path(__file__).resolve().parents[2] / "shared/data/visdrone-sample/images/0000001_02999_d_0000005.jpg"
DEFAULT_MODELS = ("yolov5s:regress", "yolov5s:cbbl", "yolov5s-xs-tph:regress", "yolov5s-xs-tph:cbbl")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img", type=int, default=1536, help="single-pass network size (long side)")
    parser.add_argument("--frame", default=str(DEFAULT_FRAME), help="drone frame (a random 1920x1080 if missing)")
    parser.add_argument("--slice", type=int, default=640, help="tile size in frame pixels (= network size)")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--slice-batch", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="cfg:box pairs (models/<cfg>.yaml)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR / "detect_speed.json"))
    return parser.parse_args()


def load_frame(path: str) -> np.ndarray:
    frame = cv2.imread(path)
    if frame is None:
        logger.warning("%s not readable: timing a random 1920x1080 frame instead", path)
        frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    return frame


def decode_seconds(backend: DetectBackend, batch: torch.Tensor, repeats: int) -> dict:
    """Seconds (median, min) of the Detect head's eval decode alone (raw level tensors -> predictions)."""
    model = backend.models[0]
    detect = model.detect
    with torch.no_grad():
        _, raw = model(batch)
        timing = time_call(lambda: [detect.decode_level(out, level) for level, out in enumerate(raw)],
                           warmup=1, repeats=max(repeats, 5))
    return timing


def bench_model(cfg: str, box: str, frame: np.ndarray, args: argparse.Namespace, workdir: Path) -> dict:
    """Single-pass and sliced latency of one model on one frame, and its decode time."""
    torch.manual_seed(0)
    model = Model(Path("models") / f"{cfg}.yaml", nc=10, head={"box_loss": "cbbl" if box == "cbbl" else "ciou"})
    weights = workdir / f"{cfg}_{box}.pt"
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml,
                     "names": [str(i) for i in range(10)]}, weights)
    backend = DetectBackend(weights, device="cpu")
    opts = DetectOptions(conf_thres=0.25, iou_thres=0.45, max_det=1000)
    single_size = (args.img, args.img)
    tile_size = (args.slice, args.slice)

    def detect_fn_at(imgsz):
        return lambda images: detect_images(images, backend, imgsz, backend.stride, backend.nc, opts)

    with torch.no_grad():
        single = time_call(lambda: detect_fn_at(single_size)([frame]), warmup=1, repeats=args.repeats)
        sliced = time_call(lambda: sliced_detect(detect_fn_at(tile_size), frame, tile_size, args.overlap,
                                                 opts.iou_thres, batch_size=args.slice_batch),
                           warmup=1, repeats=args.repeats)
    batch, _ = network_batch([frame], single_size, backend.stride)
    decode = decode_seconds(backend, batch, args.repeats)
    return {"model": cfg, "box": box, "single_s": single["median_s"], "single_min_s": single["min_s"],
            "sliced_s": sliced["median_s"], "sliced_min_s": sliced["min_s"], "network_input": list(batch.shape[2:]),
            "decode_s": decode["median_s"], "decode_min_s": decode["min_s"],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def decode_overheads(rows: list[dict]) -> list[dict]:
    """Per architecture: (C-BBL decode - regression decode) / regression single-pass latency.

    Uses the fastest run of each (min): on a shared, loaded CPU the minimum is the least disturbed figure.
    """
    by_key = {(row["model"], row["box"]): row for row in rows}
    overheads = []
    for (cfg, box), row in by_key.items():
        regress = by_key.get((cfg, "regress"))
        if box == "cbbl" and regress is not None:
            extra = row["decode_min_s"] - regress["decode_min_s"]
            overheads.append({"model": cfg, "cbbl_decode_s": row["decode_min_s"],
                              "regress_decode_s": regress["decode_min_s"],
                              "added_share_of_latency": extra / regress["single_min_s"],
                              "cbbl_decode_share_of_own_latency": row["decode_min_s"] / row["single_min_s"]})
    return overheads


def main() -> None:
    setup_logging()
    args = parse_args()
    torch.set_grad_enabled(False)
    frame = load_frame(args.frame)
    tiles = len(tile_grid(*frame.shape[:2], args.slice, args.slice, args.overlap))
    settings = {"frame": f"{args.frame} {frame.shape[1]}x{frame.shape[0]}", "img": args.img,
                "slice": f"{args.slice} px tiles, overlap {args.overlap}: {tiles} tiles", "repeats": args.repeats}
    logger.info("\n".join(header_lines(settings)))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.models:
            cfg, box = spec.split(":")
            start = time.perf_counter()
            rows.append(bench_model(cfg, box, frame, args, Path(workdir)))
            row = rows[-1]
            logger.info("%-16s %-8s single %4d px: %7.0f ms (min %7.0f)  sliced (%d tiles): %7.0f ms (min %7.0f)  "
                        "decode %6.1f ms (min %6.1f)  [%.0f s]", cfg, box, args.img, row["single_s"] * 1e3,
                        row["single_min_s"] * 1e3, tiles, row["sliced_s"] * 1e3, row["sliced_min_s"] * 1e3,
                        row["decode_s"] * 1e3, row["decode_min_s"] * 1e3, time.perf_counter() - start)
    overheads = decode_overheads(rows)
    for item in overheads:
        logger.info("%s: C-BBL decode adds %.2f%% to single-pass latency (C-BBL decode %.1f ms vs regression "
                    "%.1f ms; %.2f%% of the C-BBL model's own latency)", item["model"],
                    100 * item["added_share_of_latency"], item["cbbl_decode_s"] * 1e3, item["regress_decode_s"] * 1e3,
                    100 * item["cbbl_decode_share_of_own_latency"])
    path = write_json(Path(args.out), {"settings": settings, "header": header_lines(settings), "rows": rows,
                                       "cbbl_decode_overhead": overheads})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
