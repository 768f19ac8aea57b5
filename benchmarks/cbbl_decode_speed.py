"""C-BBL inference overhead over regression, dense vs sparse decode, measured side by side in one run.

    python benchmarks/cbbl_decode_speed.py                          # yolov5n, yolov5s at 640 and 1536 px
    python benchmarks/cbbl_decode_speed.py --models yolov5n --sizes 640 --repeats 3

Per (model, size): one random-weight network of each head (YOLOv5's objectness prior keeps the anchors that
can pass --conf few, as after training), one forward for the raw outputs, then the head's eval decode timed
for regression, C-BBL dense (every anchor's K-bin softmax) and C-BBL sparse (only anchors that can pass
--conf; models.detect.Detect.sparse_box_offsets), and each model's whole eval forward (network + decode).
Overheads are against the regression model's eval forward: ``decode`` = the extra decode time alone (stable on a
busy CPU), ``end_to_end`` = C-BBL forward (wider last conv included) - regression forward (noisier).
Writes benchmarks/results/cbbl_decode_speed.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, quiet_start, time_call, write_json  # noqa: E402
from models.yolo import Model  # noqa: E402

logger = logging.getLogger("cbbl_decode_speed")
ROOT = Path(__file__).resolve().parents[1]


def decode_time(model: Model, raw: list[torch.Tensor], conf: float | None, repeats: int) -> float:
    """Minimum seconds of the head's eval decode of ``raw`` (sparse above ``conf``, dense when None)."""
    detect = model.detect
    detect.decode_conf = conf
    timing = time_call(lambda: [detect.decode_level(out, level) for level, out in enumerate(raw)],
                       warmup=1, repeats=repeats)
    detect.decode_conf = None
    return timing["min_s"]


def bench(cfg: str, imgsz: int, args: argparse.Namespace) -> dict:
    """Forward and decode times of the regression and C-BBL heads of one model at one size."""
    images = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    row: dict = {"model": cfg, "img": imgsz}
    for box_loss in ("ciou", "cbbl"):
        torch.manual_seed(0)
        model = Model(ROOT / "models" / f"{cfg}.yaml", nc=10, head={"box_loss": box_loss}).eval()
        pred, raw = model(images)
        row[f"{box_loss}_forward_s"] = forward_time(model, images, None, args.forward_repeats)
        row[f"{box_loss}_decode_s"] = decode_time(model, raw, None, args.repeats)
        if box_loss == "cbbl":
            row["cbbl_sparse_forward_s"] = forward_time(model, images, args.conf, args.forward_repeats)
            row["cbbl_sparse_decode_s"] = decode_time(model, raw, args.conf, args.repeats)
            row["anchors"], row["anchors_above_conf"] = pred.shape[1], int((pred[0, :, 4] > args.conf).sum())
    regress = row["ciou_forward_s"]
    for mode, prefix in (("dense", "cbbl"), ("sparse", "cbbl_sparse")):
        row[f"{mode}_decode_overhead"] = (row[f"{prefix}_decode_s"] - row["ciou_decode_s"]) / regress
        row[f"{mode}_end_to_end_overhead"] = (row[f"{prefix}_forward_s"] - regress) / regress
    return row


def forward_time(model: Model, images: torch.Tensor, conf: float | None, repeats: int) -> float:
    """Minimum seconds of the eval forward (network + decode; sparse above ``conf``, dense when None)."""
    model.detect.decode_conf = conf
    seconds = time_call(lambda: model(images), warmup=0, repeats=repeats)["min_s"]
    model.detect.decode_conf = None
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="C-BBL decode overhead, dense vs sparse")
    parser.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1536])
    parser.add_argument("--conf", type=float, default=0.25, help="detect.py's default --conf-thres")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes (the minimum is reported)")
    parser.add_argument("--forward-repeats", type=int, default=2, help="timed forwards (the minimum is reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cbbl_decode_speed.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_start(logger, args.threads)
    torch.set_grad_enabled(False)
    rows = []
    for cfg in args.models:
        for imgsz in args.sizes:
            row = bench(cfg, imgsz, args)
            rows.append(row)
            logger.info("%-8s %5d px: regression forward %7.1f ms; decode regress %6.2f ms, C-BBL dense %6.2f ms "
                        "(+%.1f%% decode, %+.1f%% end to end), sparse %6.2f ms (+%.1f%% decode, %+.1f%% end to end); "
                        "%d of %d anchors above conf", cfg, imgsz, row["ciou_forward_s"] * 1e3,
                        row["ciou_decode_s"] * 1e3, row["cbbl_decode_s"] * 1e3, 100 * row["dense_decode_overhead"],
                        100 * row["dense_end_to_end_overhead"], row["cbbl_sparse_decode_s"] * 1e3,
                        100 * row["sparse_decode_overhead"], 100 * row["sparse_end_to_end_overhead"],
                        row["anchors_above_conf"], row["anchors"])
    header = header_lines({key: str(value) for key, value in vars(args).items()})
    logger.info("\n".join(header))
    write_json(args.out, {"header": header, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
