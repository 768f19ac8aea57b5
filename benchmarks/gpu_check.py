"""The GPU check: our TPH-YOLOv5 (regression and C-BBL heads) against PyPI ``yolov5``'s yolov5l at 1536 px.

    bash benchmarks/gpu_check.sh                 # installs, then runs this on cuda:0 (see docs/benchmarks.md)
    python benchmarks/gpu_check.py --ref-python /path/venv/bin/python
    python benchmarks/gpu_check.py --dry-run     # CPU, tiny sizes, 1 step, no reference (part of the tests)

Per implementation and head: AMP training step time, images/s and peak GPU memory at each --train-batches,
val throughput (fp16 forward + NMS at val settings, batch --val-batch) and detect latency (batch 1, NMS at
detect settings). Both sides are timed by the same code (benchmarks/common.py) on identical synthetic inputs. Writes
<out>.json and <out>.md (format in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NUM_CLASSES, REFERENCE_SCRIPT, RESULTS_DIR, environment, gpu_rows, result_of, write_json  # noqa: E402
from benchmarks.speed_vs_yolov5 import build_ours, head_name  # noqa: E402
from utils.files import atomic_write_text  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("benchmarks.gpu_check")
# --dry-run: the plumbing on CPU in seconds, one thread (figures meaningless).
DRY_RUN = {"cfg": "yolov5n-xs-tph", "img": 64, "train_batches": [2], "val_batch": 2, "steps": 1, "warmup": 0,
           "repeats": 1, "device": "cpu", "ref_python": None}


def our_rows(args: argparse.Namespace) -> list[dict]:
    """Training and inference rows of our model, for each head."""
    from utils.loss import ComputeLoss, LossSettings
    from utils.nms import non_max_suppression

    rows = []
    for box_loss in ("ciou", "cbbl"):
        model, hyp = build_ours(args.cfg, box_loss, args.img)
        model = model.to(args.device)
        criterion = ComputeLoss(model, LossSettings.from_hyp(hyp), imgsz=args.img)
        base = {"impl": "ours", "model": args.cfg, "head": head_name(box_loss), "imgsz": args.img}
        rows += gpu_rows(model, criterion, functools.partial(non_max_suppression, nc=NUM_CLASSES), base, args)
        del model, criterion  # the next head's peak memory is its own
    return rows


def reference_rows(args: argparse.Namespace) -> tuple[list[dict], str]:
    """PyPI yolov5's rows from its venv, or ([], why not)."""
    if args.ref_python is None or not Path(args.ref_python).is_file():
        return [], (f"reference not measured: no reference python ({args.ref_python}); gpu_check.sh installs "
                    "yolov5==7.0.14 (offline: pass it --wheels DIR)")
    command = [str(args.ref_python), str(REFERENCE_SCRIPT), "gpu", "--cfg", args.ref_cfg, "--nc", str(NUM_CLASSES),
               "--img", str(args.img), "--train-batches", *map(str, args.train_batches), "--val-batch",
               str(args.val_batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats",
               str(args.repeats), "--device", args.device] + (["--half"] if args.half else [])
    try:
        return result_of(command, Path(tempfile.gettempdir()), "reference gpu task")["rows"], ""
    except RuntimeError as err:
        return [], " | ".join(str(err).splitlines()[-6:])


def markdown(rows: list[dict], notes: list[str]) -> str:
    """One table: a row per implementation, head, task and batch."""
    lines = ["| impl | model | head | task | batch | imgsz | step / batch (s) | images/s | latency (ms) | "
             "peak GPU mem (GB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        seconds = row.get("step_s", row.get("batch_s"))
        lines.append(f"| {row['impl']} | {row['model']} | {row['head']} | {row['task']} | {row['batch']} | "
                     f"{row['imgsz']} | {seconds} | {row['images_per_s']} | {row.get('latency_ms', '')} | "
                     f"{row['peak_mem_gb'] if row['peak_mem_gb'] is not None else '-'} |")
    return "\n".join(lines + [""] + [f"Note: {note}" for note in notes]) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GPU check: ours vs PyPI yolov5 at 1536 px")
    parser.add_argument("--cfg", default="yolov5l-xs-tph", help="our model (models/<cfg>.yaml)")
    parser.add_argument("--ref-cfg", default="yolov5l", help="their model YAML")
    parser.add_argument("--img", type=int, default=1536)
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--val-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps / calls first (cuDNN autotuning)")
    parser.add_argument("--repeats", type=int, default=20, help="timed inference calls")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--ref-python", type=Path, default=None, help="python of a venv with yolov5==7.0.14")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 step, no reference")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_check")
    args = parser.parse_args(argv)
    if args.dry_run:
        for key, value in DRY_RUN.items():
            setattr(args, key, value)
        torch.set_num_threads(1)
    args.half, args.nc = args.device.startswith("cuda"), NUM_CLASSES
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.error("--device %s: CUDA is not available here; use --dry-run for the CPU plumbing check", args.device)
        return 2
    torch.backends.cudnn.benchmark = True  # both trainers turn it on
    rows = our_rows(args)
    theirs, note = reference_rows(args) if not args.dry_run else ([], "dry run: CPU, tiny sizes, no reference")
    notes = [note] if note else []
    rows += theirs
    payload = {"environment": environment(), "settings": {k: str(v) for k, v in vars(args).items()},
               "dry_run": args.dry_run, "notes": notes, "rows": rows}
    write_json(args.out.with_suffix(".json"), payload)
    table = markdown(rows, notes)
    atomic_write_text(args.out.with_suffix(".md"), table)
    logger.info("\n%s", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
