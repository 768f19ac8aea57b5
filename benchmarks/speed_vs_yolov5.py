"""Speed and memory against the reference implementation (Ultralytics' YOLOv5 from PyPI), same machine.

    python benchmarks/speed_vs_yolov5.py --ref-python /path/to/refenv/bin/python
    python benchmarks/speed_vs_yolov5.py --cfg yolov5n --tasks infer train_step --rounds 3

Each task runs as interleaved A/B rounds: ours, theirs, ours, theirs... A round times both sides back to
back, so a load change between rounds hits both; its ratio (ours / theirs, < 1: ours faster) is taken on
the round's minima, and the spread of the per-round ratios (min, median, max) is reported. Both sides run
with the same thread count (``--threads``, 1 by default: torch, OpenMP/MKL and ONNX Runtime; OpenCV
single-threaded, as YOLOv5 sets it on import). The 1-minute load is recorded before and after; above the
core count the run refuses to report (``--force`` reports anyway, marked ``loaded``).

Our side runs in this process (except the memory task: a fresh process per side); theirs in its own venv
(``--ref-python``, see docs/benchmarks.md) through benchmarks/_reference_yolov5.py, on the same seeded inputs
written to a temp folder: a training batch with many small boxes (VisDrone-like) and JPEGs at VisDrone's frame
sizes for the mosaic loaders. Our side is what the library does by default on CPU: fused and channels-last
inference through DetectBackend (and the ``--runtime onnxruntime`` path as its own rows), a channels-last
training step as the Trainer runs it. ``--precisions bf16`` adds our bfloat16 rows where the CPU has native bf16
(AMX or AVX512-BF16): the training step under ``--amp`` (bf16 autocast of backbone and neck, head and loss fp32)
and inference under ``--half``, each against YOLOv5's fp32, its only precision on CPU. The fp32 rows stay beside
them. Writes benchmarks/results/speed_vs_yolov5.{csv,json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    BOXES_PER_IMAGE,
    NUM_CLASSES,
    REFERENCE_SCRIPT,
    RESULT_PREFIX,
    RESULTS_DIR,
    drain_loader,
    header_lines,
    peak_rss_mb,
    result_of,
    synthetic_batch,
    time_call,
    write_csv,
    write_json,
)
from utils.files import atomic_write_text  # noqa: E402
from utils.head import HeadConfig  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.log import setup_logging  # noqa: E402
from utils.torch_utils import autocast, cpu_has_native_bf16  # noqa: E402

logger = logging.getLogger("benchmarks.speed_vs_yolov5")
ROOT = Path(__file__).resolve().parents[1]
TASKS = ("train_step", "infer", "dataloader", "train_rss")
MODEL_TASKS = ("train_step", "infer", "train_rss")
HEADS = ("ciou", "cbbl")  # box loss -> our regression / C-BBL head
SPARSE = "torch-sparse"  # detect.py's PyTorch path for C-BBL: box distributions decoded only above --conf-thres,
# with the side variances its default variance voting reads
SPARSE_PLAIN = "torch-sparse-plain"  # the same under --no-cbbl-fusion: no side variances
ORT_VARIANCE = "onnxruntime-variance"  # C-BBL exported with its side_variance output (what --cbbl-fusion reads)
SPARSE_RUNTIMES = (SPARSE, SPARSE_PLAIN)  # PyTorch with detect.py's decode settings
CBBL_ONLY_RUNTIMES = (*SPARSE_RUNTIMES, ORT_VARIANCE)
RUNTIMES = ("torch", SPARSE, SPARSE_PLAIN, "onnxruntime", ORT_VARIANCE)
# our rows' labels (cl: channels-last; the ONNX Runtime paths keep their names)
RUNTIME_LABELS = {"torch": "torch cl", SPARSE: "torch cl sparse", SPARSE_PLAIN: "torch cl sparse plain"}
PRECISIONS = ("fp32", "bf16")  # ours; bf16 = autocast on the CPU's matrix units (--amp / --half)
CPU = torch.device("cpu")
EXIT_LOADED = 3
FRAME_SIZES = ((1360, 765), (1920, 1080), (1400, 1050))  # VisDrone-DET frame sizes (w, h) of the loader images
LOADER_IMAGES = 32


def write_loader_images(folder: Path, nc: int, rng: np.random.Generator) -> Path:
    """images/*.jpg + labels/*.txt (YOLO format) with textured backgrounds and filled small boxes."""
    image_dir, label_dir = folder / "images", folder / "labels"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for index in range(LOADER_IMAGES):
        width, height = FRAME_SIZES[index % len(FRAME_SIZES)]
        low_res = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = cv2.resize(low_res, (width, height), interpolation=cv2.INTER_CUBIC)  # texture, realistic JPEG size
        size = np.exp(rng.uniform(np.log(4), np.log(96), (BOXES_PER_IMAGE, 2)))  # 4..96 px, mostly < 32
        boxes = np.concatenate([rng.uniform(size / 2, np.array([width, height]) - size / 2), size], 1)  # cxcywh
        classes = rng.integers(0, nc, len(boxes))
        for cx, cy, w, h in boxes:
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.rectangle(image, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), color, -1)
        cv2.imwrite(str(image_dir / f"frame_{index:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        normalised = boxes / np.array([width, height, width, height])
        lines = [f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for cls, (cx, cy, w, h) in zip(classes, normalised)]
        (label_dir / f"frame_{index:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return image_dir


def build_ours(cfg: str, box_loss: str, imgsz: int):
    """Our Model from models/<cfg>.yaml with the head the hyp asks for, and its hyp."""
    from models.yolo import Model

    hyp = load_hyp(None, box_loss=box_loss)
    torch.manual_seed(0)
    return Model(ROOT / "models" / f"{cfg}.yaml", nc=NUM_CLASSES, head=HeadConfig.from_hyp(hyp, imgsz)), hyp


def head_name(box_loss: str) -> str:
    return "cbbl" if box_loss == "cbbl" else "regress"


def save_random_checkpoint(cfg: str, box_loss: str, imgsz: int, path: Path) -> Path:
    """A checkpoint of :func:`build_ours`'s random-weight model, in the layout train.py writes, at ``path``."""
    from utils.checkpoint import save_checkpoint

    model, _ = build_ours(cfg, box_loss, imgsz)
    save_checkpoint({"model": model.state_dict(), "ema": None, "model_yaml": model.yaml,
                     "names": [str(i) for i in range(NUM_CLASSES)], "epoch": 0}, path)
    return path


def training_step(model: torch.nn.Module, criterion: Callable, images: torch.Tensor, targets: torch.Tensor,
                  bf16: bool) -> Callable[[], torch.Tensor]:
    """Trainer.train_step's forward + loss + backward on CPU: under bf16 the forward autocasts (the head stays fp32
    by itself) and the loss runs in fp32. The returned call gives the loss; the gradients are in ``model``."""
    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with autocast(CPU, bf16):
            preds = model(images)
            with torch.autocast("cpu", enabled=False):
                loss, _ = criterion(preds, targets)
        loss.backward()
        return loss.detach()
    return step


def ours_train_step(args: argparse.Namespace, cfg: str, box_loss: str, precision: str = "fp32") -> dict:
    """:func:`training_step` on the shared batch, channels-last as the Trainer runs it on CPU."""
    from utils.loss import ComputeLoss, LossSettings

    batch = torch.load(args.inputs / "train_batch.pt", weights_only=True)
    model, hyp = build_ours(cfg, box_loss, args.img)
    criterion = ComputeLoss(model.train(), LossSettings.from_hyp(hyp), imgsz=args.img)
    model = model.to(memory_format=torch.channels_last)
    images = (batch["images"].float() / 255).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
    return time_call(training_step(model, criterion, images, batch["targets"], precision == "bf16"),
                     args.warmup, args.repeats)


def ours_backend(args: argparse.Namespace, cfg: str, box_loss: str, runtime: str, precision: str = "fp32"):
    """Our DetectBackend for a random-weight checkpoint of ``cfg``, as detect/val load it (cached per run);
    ``torch-sparse`` is the PyTorch backend decoding as detect.py does by default (``--conf-thres`` 0.25, C-BBL's
    side variances for variance voting), ``torch-sparse-plain`` the same under ``--no-cbbl-fusion``;
    ``onnxruntime-variance`` the ONNX export with the side_variance output (``export.py --side-variance``);
    bf16 is detect.py's ``--half`` on CPU."""
    from utils.infer.options import DetectOptions
    from utils.infer.runtime import load_backend

    key = (cfg, box_loss, runtime, precision)
    if key not in args.backends:
        path = args.inputs / f"ours_{cfg}_{box_loss}.pt"
        if not path.exists():
            save_random_checkpoint(cfg, box_loss, args.img, path)
        backend = load_backend([str(path)], CPU, half=precision == "bf16",
                               runtime="torch" if runtime in SPARSE_RUNTIMES else
                               {ORT_VARIANCE: "onnxruntime"}.get(runtime, runtime),
                               cbbl_fusion=runtime == ORT_VARIANCE)
        if precision == "bf16" and not backend.bf16:
            raise RuntimeError(f"{cfg} {box_loss} {runtime}: --half did not enable bf16 on this CPU")
        if runtime in SPARSE_RUNTIMES:  # detect.py's decode, with or without the side variances voting reads
            backend.decode_only_above(DetectOptions().conf_thres)
            backend.decode_side_variance(DetectOptions().cbbl_fusion if runtime == SPARSE else False)
        args.backends[key] = backend
    return args.backends[key]


def ours_infer(args: argparse.Namespace, cfg: str, box_loss: str, runtime: str, precision: str = "fp32") -> dict:
    """Batch-1 latency per size through DetectBackend (fused; channels-last on CPU, or ONNX Runtime)."""
    backend = ours_backend(args, cfg, box_loss, runtime, precision)
    results = {}
    for size in args.infer_sizes:
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            results[str(size)] = time_call(lambda image=image: backend(image), args.warmup, args.repeats)
    return results


def ours_dataloader(args: argparse.Namespace, size: int) -> dict:
    """Seconds per image through our mosaic training loader on the shared images (same hyps as theirs)."""
    from utils.data.augment import AugmentSettings
    from utils.data.dataset import create_dataloader

    loader, _ = create_dataloader(str(args.images), size, args.batch, 32, augmentation=AugmentSettings.from_hyp(),
                                  augment=True,
                                  workers=args.workers, shuffle=True, seed=0)
    return per_image(drain_loader(loader, args.loader_batches))


def per_image(drained: dict) -> dict:
    """drain_loader's images/s as a timing (one sample: min = median)."""
    seconds = 1 / drained["images_per_s"]
    return {"median_s": seconds, "min_s": seconds, "images_per_s": drained["images_per_s"]}


def train_rss_child(argv: list[str]) -> None:
    """In a fresh process: ``steps`` Trainer steps of ``cfg`` (b8, mosaic loader, SGD); prints the peak RSS."""
    from utils.data.augment import AugmentSettings
    from utils.data.dataset import create_dataloader
    from utils.engine.trainer import Trainer
    from utils.loss import ComputeLoss, LossSettings

    images, cfg, imgsz, batch, steps, threads = argv[0], argv[1], *map(int, argv[2:])
    torch.set_num_threads(threads)
    cv2.setNumThreads(0)
    loader, _ = create_dataloader(images, imgsz, batch, 32, augmentation=AugmentSettings.from_hyp(), augment=True,
                                  shuffle=True)
    model, hyp = build_ours(cfg, "ciou", imgsz)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    criterion = ComputeLoss(model, LossSettings.from_hyp(hyp), imgsz=imgsz)
    trainer = Trainer(model=model.train(), loss_fn=criterion, optimizer=optimizer,
                      train_loader=loader, device=torch.device("cpu"), epochs=1, imgsz=imgsz)
    for index, (batch_images, targets, paths, _) in enumerate(loader):
        if index == steps:
            break
        trainer.iteration = index
        trainer.train_step(batch_images, targets, paths)
    sys.stdout.write(RESULT_PREFIX + json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")  # read by result_of


def ours_train_rss(args: argparse.Namespace, cfg: str) -> dict:
    """Peak resident memory of our training loop in a fresh process (the parent's memory stays out)."""
    command = [sys.executable, "-c", "import sys; from benchmarks.speed_vs_yolov5 import train_rss_child; "
               "train_rss_child(sys.argv[1:])", str(args.images), cfg, str(args.img), str(args.batch),
               str(args.rss_steps), str(args.threads)]
    return result_of(command, ROOT, f"our train_rss ({cfg})", thread_env())


def thread_env() -> dict[str, str]:
    """The environment for child processes: OpenMP/MKL pinned to this process's torch thread count."""
    threads = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_reference(args: argparse.Namespace, task: str, cfg: str = "yolov5s", img: int | None = None) -> dict:
    """Run one task of _reference_yolov5.py in the reference venv; its RESULT_JSON line as a dict."""
    command = [str(args.ref_python), str(REFERENCE_SCRIPT), task, "--inputs", str(args.inputs), "--cfg", cfg,
               "--nc", str(NUM_CLASSES), "--img", str(img or args.img), "--batch", str(args.batch),
               "--sizes", *map(str, args.infer_sizes), "--images", str(args.images),
               "--batches", str(args.loader_batches), "--workers", str(args.workers), "--steps", str(args.rss_steps),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(torch.get_num_threads())]
    return result_of(command, Path(tempfile.gettempdir()), f"reference task {task} ({cfg})", thread_env())


def reference_version(ref_python: Path) -> str:
    """The installed version of the ``yolov5`` package in the reference venv."""
    done = subprocess.run([str(ref_python), "-c", "import importlib.metadata as m; print(m.version('yolov5'))"],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    return done.stdout.strip() or f"unknown ({done.stderr.strip()[-200:]})"


def pair(key: tuple, ours: dict, theirs: dict, value: str = "min_s") -> dict:
    """One round's measurement of one row: both sides' ``value`` and their ratio, with the load now."""
    return {"key": key, "ours": ours[value], "theirs": theirs[value], "ratio": ours[value] / theirs[value],
            "load": os.getloadavg()[0]}


def variant(runtime: str, precision: str) -> str:
    """A row's label for our side: runtime, then the precision where it is not fp32."""
    label = RUNTIME_LABELS.get(runtime, runtime)
    return label if precision == "fp32" else f"{label} {precision}"


def round_train_step(args: argparse.Namespace, cfg: str) -> list[dict]:
    paths = [(box, precision) for box in HEADS for precision in args.precisions]
    ours = {path: ours_train_step(args, cfg, *path) for path in paths}
    theirs = run_reference(args, "train_step", cfg)
    return [pair((f"train_step b{args.batch} {args.img}px", cfg, head_name(box), variant("torch", precision)),
                 ours[box, precision], theirs) for box, precision in paths]


def round_infer(args: argparse.Namespace, cfg: str) -> list[dict]:
    paths = [(box, rt, precision) for box in HEADS for rt in args.runtimes for precision in args.precisions
             if (rt not in CBBL_ONLY_RUNTIMES or box == "cbbl")
             and (precision == "fp32" or not rt.startswith("onnxruntime"))]  # bf16 is a PyTorch autocast
    ours = {path: ours_infer(args, cfg, *path) for path in paths}
    theirs = run_reference(args, "infer", cfg)
    return [pair((f"infer b1 {size}px", cfg, head_name(box), variant(rt, precision)),
                 ours[box, rt, precision][str(size)], theirs[str(size)])
            for box, rt, precision in paths for size in args.infer_sizes]


def round_train_rss(args: argparse.Namespace, cfg: str) -> list[dict]:
    ours, theirs = ours_train_rss(args, cfg), run_reference(args, "train_rss", cfg)
    return [pair((f"peak RSS train b{args.batch} {args.img}px (MB)", cfg, "regress", "torch cl"), ours, theirs,
                 value="peak_rss_mb")]


def round_dataloader(args: argparse.Namespace, cfg: str) -> list[dict]:
    rows = []
    for size in args.loader_sizes:
        ours = ours_dataloader(args, size)
        theirs = per_image(run_reference(args, "dataloader", img=size))
        rows.append(pair((f"mosaic loader b{args.batch} {size}px (s/image)", "-", "-", f"{args.workers} workers"),
                         ours, theirs))
    return rows


ROUNDS: dict[str, Callable[[argparse.Namespace, str], list[dict]]] = {
    "train_step": round_train_step, "infer": round_infer, "dataloader": round_dataloader,
    "train_rss": round_train_rss}


def summarise(rounds: list[list[dict]]) -> list[dict]:
    """One row per measurement: the spread of the per-round ratios and both sides' best value over all rounds;
    a bf16 row adds the median of its per-round ratio to our fp32 row of the same round (``vs_our_fp32``)."""
    rows = []
    for same in zip(*rounds):
        task, model, head, variant = same[0]["key"]
        ratios = [m["ratio"] for m in same]
        row = {"task": task, "model": model, "our_head": head, "ours_variant": variant, "rounds": len(same),
               "ours_best": min(m["ours"] for m in same), "theirs_best": min(m["theirs"] for m in same),
               "ratio_median": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
               "ratio_max": round(max(ratios), 3), "ratios": " ".join(f"{r:.3f}" for r in ratios),
               "load_1min": " ".join(f"{m['load']:.1f}" for m in same)}
        if variant.endswith(" bf16"):
            fp32_key = (task, model, head, variant.removesuffix(" bf16"))
            fp32 = [next(m["ours"] for m in measured if m["key"] == fp32_key) for measured in rounds]
            row["vs_our_fp32"] = round(statistics.median(m["ours"] / f for m, f in zip(same, fp32)), 3)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], loaded: bool) -> str:
    """The summary as a markdown table (ratio = ours / theirs; per-round spread in brackets)."""
    lines = ["| task | model | our head | ours | ours best | theirs best | ratio median [min, max] | bf16 / our fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        vs_fp32 = f"{row['vs_our_fp32']:.2f}" if "vs_our_fp32" in row else "-"
        lines.append(f"| {row['task']} | {row['model']} | {row['our_head']} | {row['ours_variant']} | "
                     f"{row['ours_best']:.4g} | {row['theirs_best']:.4g} | **{row['ratio_median']:.2f}** "
                     f"[{row['ratio_min']:.2f}, {row['ratio_max']:.2f}] | {vs_fp32} |")
    if loaded:
        lines.append("\nLOADED: the 1-minute load exceeded the core count (run with --force); indicative only.")
    return "\n".join(lines) + "\n"


def machine_load(cores: int) -> tuple[float, bool]:
    """The 1-minute load average and whether it exceeds the core count."""
    load = os.getloadavg()[0]
    return load, load > cores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Speed of our detector against Ultralytics' YOLOv5 (PyPI)")
    parser.add_argument("--cfg", nargs="+", default=["yolov5s", "yolov5n"], help="architectures (models/<cfg>.yaml)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--img", type=int, default=640, help="training image size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--infer-sizes", type=int, nargs="+", default=[640, 1536])
    parser.add_argument("--loader-sizes", type=int, nargs="+", default=[640, 1536])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES,
                        help="our inference runtimes to time (as detect/val --runtime; torch-sparse: "
                             "the C-BBL rows as detect.py decodes them, -plain: under --no-cbbl-fusion)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                        default=list(PRECISIONS) if cpu_has_native_bf16() else ["fp32"],
                        help="our precisions for the train_step and infer rows (bf16: --amp / --half on a CPU "
                             "with native bf16; the default where it has it)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds per task (ours, theirs, ours, theirs...)")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--rss-steps", type=int, default=3, help="training steps of the peak-memory task")
    parser.add_argument("--rss-cfg", default="yolov5s", help="architecture of the peak-memory task")
    parser.add_argument("--workers", type=int, default=0, help="loader workers, same on both sides")
    parser.add_argument("--threads", type=int, default=1, help="threads on both sides (torch, OpenMP, ONNX Runtime)")
    parser.add_argument("--force", action="store_true",
                        help="report even when the load exceeds the core count (results marked 'loaded')")
    parser.add_argument("--ref-python", type=Path, default=Path("/work/refenv/bin/python"),
                        help="python of the venv with `pip install yolov5==7.0.14`")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed_vs_yolov5")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(0)  # as YOLOv5 does on import: both loaders decode and warp single-threaded
    if not args.ref_python.is_file():
        logger.error("reference python %s not found: create it with `python -m venv --system-site-packages "
                     "/work/refenv && /work/refenv/bin/pip install yolov5==7.0.14 'setuptools<80'` or pass "
                     "--ref-python", args.ref_python)
        return 2
    if "bf16" in args.precisions and not cpu_has_native_bf16():
        logger.error("--precisions bf16: this CPU has no native bfloat16 (amx_bf16/avx512_bf16), bf16 would be "
                     "emulated; measure fp32 only")
        return 2
    cores = os.cpu_count() or 1
    load_before, loaded = machine_load(cores)
    if loaded and not args.force:
        logger.error("1-minute load %.1f exceeds the %d cores: the ratios would be noise. Run on a quiet machine, "
                     "or pass --force to report them marked as loaded", load_before, cores)
        return EXIT_LOADED
    settings = {"reference": f"yolov5 {reference_version(args.ref_python)} (PyPI), random weights from its YAMLs",
                **{key: str(value) for key, value in vars(args).items()}}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="speed_vs_yolov5_") as tmp:
        args.inputs, args.backends = Path(tmp), {}
        images, targets = synthetic_batch(args.batch, args.img, NUM_CLASSES)
        torch.save({"images": images, "targets": targets}, args.inputs / "train_batch.pt")  # read by both sides
        args.images = write_loader_images(args.inputs / "loader", NUM_CLASSES, np.random.default_rng(0))
        for task in args.tasks:
            for cfg in {"train_rss": [args.rss_cfg]}.get(task, args.cfg if task in MODEL_TASKS else ["-"]):
                rounds = []
                for index in range(args.rounds):
                    rounds.append(ROUNDS[task](args, cfg))
                    logger.info("%s %s round %d/%d: ratios %s (load %.1f)", task, cfg, index + 1, args.rounds,
                                " ".join(f"{m['ratio']:.3f}" for m in rounds[-1]), os.getloadavg()[0])
                rows += summarise(rounds)
            if args.force:  # a long loaded run keeps what it has measured so far
                report(args, rows, settings, cores, load_before, complete=False)
    return report(args, rows, settings, cores, load_before, complete=True)


def report(args: argparse.Namespace, rows: list[dict], settings: dict, cores: int, load_before: float,
           complete: bool) -> int:
    """Write <out>.{csv,json,md} unless the load exceeded the core count without --force (then EXIT_LOADED)."""
    load_now, loaded_now = machine_load(cores)
    loaded = load_before > cores or loaded_now
    settings = {**settings, "load_before": f"{load_before:.2f}", "load_after": f"{load_now:.2f}",
                "loaded": str(loaded), "complete": str(complete)}
    table = markdown_table(rows, loaded)
    if complete:
        logger.info("\n%s", table)
    if loaded and not args.force:
        logger.error("the load rose to %.1f (> %d cores) during the run: not reported; rerun, or pass --force",
                     load_now, cores)
        return EXIT_LOADED
    header = header_lines(settings)
    write_csv(args.out.with_suffix(".csv"), rows)
    write_json(args.out.with_suffix(".json"), {"header": header, "loaded": loaded, "complete": complete, "rows": rows})
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(header) + "\n\n" + table)
    return 0

if __name__ == "__main__":
    sys.exit(main())
