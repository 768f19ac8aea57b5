"""Does torch.compile (inductor, CPU) pay for its compile time? Eager against compiled, the same model and inputs.

    python benchmarks/compile_cpu.py                                    # yolov5n C-BBL, bf16 where native
    python benchmarks/compile_cpu.py --box-loss ciou --precision fp32

Two tasks, each as this project runs them on CPU: ``infer`` is detect.py's PyTorch path (DetectBackend, fused,
channels-last, sparse C-BBL decode at --conf-thres 0.25, --half = bf16) on one image, against the same backend's
model in ``torch.compile`` with the dense decode (the one that compiles to a single graph); ``train_step`` is the
Trainer's forward + loss + backward on a synthetic batch (channels-last, the backbone under --amp), eager against
the model in ``torch.compile``. Reported per task: the eager and the
compiled seconds per call (median of interleaved calls after warm-up), the compile time (the first compiled
call less one eager call), the calls it takes to earn that back, and how far the compiled outputs (inference
boxes, training loss and gradients) are from eager ones and from a second compiled run (exact resume needs 0).
Writes benchmarks/results/compile_cpu_<cfg>_<box loss>_<precision>.json and .md.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    NUM_CLASSES,
    RESULTS_DIR,
    environment,
    header_lines,
    quiet_start,
    synthetic_batch,
    write_json,
)
from benchmarks.speed_vs_yolov5 import build_ours, save_random_checkpoint, training_step  # noqa: E402
from utils.files import atomic_write_text  # noqa: E402
from utils.torch_utils import cpu_has_native_bf16  # noqa: E402

logger = logging.getLogger("benchmarks.compile_cpu")
CPU = torch.device("cpu")
TASKS = ("infer", "train_step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="yolov5n", help="architecture (models/<cfg>.yaml)")
    parser.add_argument("--box-loss", default="cbbl", choices=("ciou", "cbbl"))
    parser.add_argument("--precision", default="bf16" if cpu_has_native_bf16() else "fp32", choices=("fp32", "bf16"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def infer_calls(args: argparse.Namespace, folder: Path) -> tuple[Callable[[], Any], ...]:
    """detect.py's eager forward of one image (sparse C-BBL decode), the compiled forward, and the eager forward of
    the path that was compiled: the dense decode (the sparse one's data-dependent row count breaks the graph inside
    the layer loop, and dynamo then falls back to compiling each layer on its own)."""
    from utils.infer.runtime import load_backend

    path = save_random_checkpoint(args.cfg, args.box_loss, args.img, folder / "model.pt")
    image = torch.rand(1, 3, args.img, args.img, generator=torch.Generator().manual_seed(0))
    sparse, dense, compiled = (load_backend([str(path)], CPU, half=args.precision == "bf16") for _ in range(3))
    sparse.decode_only_above(0.25)  # detect.py's default --conf-thres
    compiled.models[0] = torch.compile(compiled.models[0])

    def call(backend) -> Callable[[], torch.Tensor]:
        def forward() -> torch.Tensor:
            with torch.inference_mode():
                return backend(image)
        return forward
    return call(sparse), call(compiled), call(dense)


def train_calls(args: argparse.Namespace) -> tuple[Callable[[], Any], ...]:
    """Eager and compiled training steps from the same weights; each returns the loss and the flat gradient."""
    from utils.loss import ComputeLoss, LossSettings

    images, targets = synthetic_batch(args.batch, args.img, NUM_CLASSES)
    images = (images.float() / 255).contiguous(memory_format=torch.channels_last)
    steps = []
    for compiled in (False, True):
        model, hyp = build_ours(args.cfg, args.box_loss, args.img)
        criterion = ComputeLoss(model.train(), LossSettings.from_hyp(hyp), imgsz=args.img)
        model = model.to(memory_format=torch.channels_last)
        step = training_step(torch.compile(model) if compiled else model, criterion, images, targets,
                             args.precision == "bf16")

        def loss_and_gradient(step=step, model=model) -> torch.Tensor:
            loss = step()
            return torch.cat([loss.view(1), *(p.grad.flatten() for p in model.parameters() if p.grad is not None)])
        steps.append(loss_and_gradient)
    return tuple(steps)


def measure(eager: Callable[[], torch.Tensor], compiled: Callable[[], torch.Tensor], repeats: int,
            same_path: Callable[[], torch.Tensor] | None = None) -> dict[str, Any]:
    """Compile time, interleaved per-call medians, break-even calls, and the compiled outputs' differences from
    ``same_path`` (the eager run of what was compiled; default ``eager``) and from a second compiled call."""
    start = time.perf_counter()
    reference = eager()
    eager_first = time.perf_counter() - start
    reference = same_path() if same_path is not None else reference
    start = time.perf_counter()
    first = compiled()
    compile_s = time.perf_counter() - start - eager_first
    second = compiled()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for name, fn in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    saved = eager_s - compiled_s
    return {"eager_s": eager_s, "compiled_s": compiled_s, "ratio": compiled_s / eager_s, "compile_s": compile_s,
            "break_even_calls": math.ceil(compile_s / saved) if saved > 0 else None,
            "max_abs_diff_vs_eager": float((first - reference).abs().max()),
            "max_abs_diff_compiled_twice": float((second - first).abs().max())}


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | eager s/call | compiled s/call | compiled / eager | compile s | break-even calls | "
             "max diff vs eager | max diff, compiled twice |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['task']} | {row['eager_s']:.4g} | {row['compiled_s']:.4g} | {row['ratio']:.2f} | "
                     f"{row['compile_s']:.0f} | {row['break_even_calls'] or 'never'} | "
                     f"{row['max_abs_diff_vs_eager']:.2g} | {row['max_abs_diff_compiled_twice']:.2g} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_start(logger, args.threads)
    if args.precision == "bf16" and not cpu_has_native_bf16():
        logger.error("--precision bf16: this CPU has no native bfloat16 (amx_bf16/avx512_bf16); use fp32")
        raise SystemExit(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compile_cpu_") as folder:
        for task in args.tasks:
            logger.info("%s: eager, then torch.compile (the first compiled call compiles; minutes on a CPU)", task)
            calls = infer_calls(args, Path(folder)) if task == "infer" else train_calls(args)
            rows.append({"task": task, **measure(*calls[:2], args.repeats, *calls[2:])})
            logger.info("%s", table(rows)[-1])
    name = f"compile_cpu_{args.cfg}_{args.box_loss}_{args.precision}"
    settings = vars(args)
    write_json(RESULTS_DIR / f"{name}.json", {"environment": environment(), "settings": settings, "rows": rows})
    atomic_write_text(RESULTS_DIR / f"{name}.md", "\n".join(header_lines(settings) + [""] + table(rows)) + "\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
