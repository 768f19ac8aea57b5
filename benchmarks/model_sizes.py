"""Size and CPU speed of every model config, in both head modes.

For each models/*.yaml: parameters, GFLOPs at 640 px (2 x thop MACs, models/info.py), and the median
eval-mode forward time (decode included) of one --img image on this machine. Compares with YOLOv5's
published v6+ figures where they exist. Prints a table and writes benchmarks/results/model_sizes.{csv,json}.

    python benchmarks/model_sizes.py [--img 320] [--repeats 5] [--threads 1] [--configs yolov5n yolov5n-xs-tph]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, time_call, write_csv, write_json  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("model_sizes")
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
PUBLISHED = {"yolov5n": (1.9, 4.5), "yolov5s": (7.2, 16.5), "yolov5m": (21.2, 49.0), "yolov5l": (46.5, 109.1),
             "yolov5x": (86.7, 205.7)}  # (M parameters, GFLOPs) at nc=80, 640 px
GFLOPS_SIZE = 640


def measure(name: str, box: str, imgsz: int, repeats: int) -> dict:
    """One config in one head mode: size figures and the median forward time."""
    nc = 80 if name in PUBLISHED else 10
    model = Model(MODELS_DIR / f"{name}.yaml", nc=nc, head={"box_loss": "cbbl" if box == "cbbl" else "ciou"}).eval()
    info = model.info(GFLOPS_SIZE)
    image = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():
        timing = time_call(lambda: model(image), warmup=1, repeats=repeats)
    published = PUBLISHED.get(name, (None, None))
    return {"config": name, "box": box, "nc": nc, "params": info["params"], "gflops_640": round(info["gflops"], 2),
            "published_params_m": published[0], "published_gflops": published[1],
            f"forward_ms_{imgsz}": round(timing["median_s"] * 1e3, 1)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img", type=int, default=320, help="square input size of the timed forward")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = stable on a shared machine)")
    parser.add_argument("--configs", nargs="*", default=None, help="config stems (default: every models/*.yaml)")
    return parser.parse_args()


def main() -> None:
    setup_logging()
    opts = parse_args()
    torch.set_num_threads(opts.threads)
    configs = opts.configs or sorted(path.stem for path in MODELS_DIR.glob("*.yaml"))
    header = header_lines({"img": opts.img, "repeats": opts.repeats})
    rows = [measure(name, box, opts.img, opts.repeats) for name in configs for box in ("regress", "cbbl")]
    logger.info("\n".join(header))
    for row in rows:
        logger.info("  ".join(f"{key}={value}" for key, value in row.items()))
    write_csv(RESULTS_DIR / "model_sizes.csv", rows)
    write_json(RESULTS_DIR / "model_sizes.json", {"header": header, "rows": rows})


if __name__ == "__main__":
    main()
