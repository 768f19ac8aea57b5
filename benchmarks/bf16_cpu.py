"""What bfloat16 on the CPU's matrix units does to val mAP; its speed is in speed_vs_yolov5.py.

    python benchmarks/bf16_cpu.py --weights runs/train/exp/weights/best.pt --data synthetic.yaml
    python benchmarks/bf16_cpu.py --weights ../shared/weights/yolov5n-coco-v6.1.pt \
        --coco-labels-of ../shared/data/visdrone-real/VisDrone2019-DET-val

Each --weights checkpoint is validated twice with val.py's defaults (YOLOv5's metric, or --protocol), --half off
(fp32) and on (bf16 autocast, head and decode fp32), on each --data set; the differences are what bf16 changes.
Needs a CPU with native bf16 (amx_bf16 or avx512_bf16): elsewhere bf16 is emulated and this exits with a line.
Writes benchmarks/results/bf16_cpu_accuracy[_<name>].json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, environment, quiet_start, write_json  # noqa: E402
from utils.files import atomic_write_text  # noqa: E402
from utils.torch_utils import cpu_has_native_bf16  # noqa: E402

logger = logging.getLogger("benchmarks.bf16_cpu")
PRECISIONS = ("fp32", "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", nargs="+", required=True, help="checkpoints to validate")
    parser.add_argument("--data", nargs="+", default=["synthetic.yaml"], help="dataset YAMLs")
    parser.add_argument("--val-img", type=int, default=640, help="val.py --img")
    parser.add_argument("--protocol", default=None, help="val.py --protocol (default: YOLOv5's; coco gives AP_small)")
    parser.add_argument("--coco-labels-of", default="", help="a VisDrone split folder (images/, annotations/): "
                        "validate on it with COCO class ids, for COCO-trained --weights (instead of --data)")
    parser.add_argument("--name", default="", help="suffix of the result files")
    return parser.parse_args(argv)


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
    suffix = f"_{args.name}" if args.name else ""
    before = environment()
    rows = run_accuracy(args)
    header = {**before, "load_after_1_5_15": [round(x, 2) for x in os.getloadavg()], "settings": vars(args)}
    text = "\n".join(["# bf16 vs fp32 on CPU: accuracy", "", "```", json.dumps(header, indent=1), "```", "",
                      *accuracy_table(rows), ""])
    write_json(RESULTS_DIR / f"bf16_cpu_accuracy{suffix}.json", {"environment": header, "rows": rows})
    atomic_write_text(RESULTS_DIR / f"bf16_cpu_accuracy{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
