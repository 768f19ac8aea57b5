"""The C-BBL grid study at small scale, on the synthetic small-object data, CPU budget.

    python benchmarks/ablation.py                      # every config x 3 seeds, resumable
    python benchmarks/ablation.py --configs ciou cbbl_paper --seeds 1 2 --budget-min 35
    python benchmarks/ablation.py --gradients          # box-loss gradients of the seed-0 runs, first/last epoch

Trains the same small model once per (config, seed) through the library entry point
utils.engine.run.run, appends each finished run's row (last-epoch mAP50, mAP50-95, AP_small, wall
time, or the failure) to benchmarks/results/ablation/runs.csv at once, and skips finished rows on a
rerun, and each C-BBL run's grid with the % of training targets per interval to grid_mass.csv. Then writes
summary.csv and summary.md (mean, sample std over seeds, Welch's t against ciou; each grid's target mass), and
each run's results.csv to curves/. Tiny-budget figures: read the spread, not the digits.

--gradients (the paper's motivation, its Fig. 1-2 and 5): for the first and last epoch checkpoint of each
seed-0 run (weights/epoch{N}.pt, model weights, not EMA) and the first --gradient-images validation images,
each positive anchor's box loss is differentiated with respect to the head's raw box outputs (4 regression
values, or 4*K C-BBL logits); the per-positive norm is averaged over the positives of small (< 32x32 px in the
original image, COCO) and of normal-size objects. The comparable figure between losses is the small / normal
ratio (the raw scales differ by loss). Writes gradients.{csv,json} into the study's folder.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    append_csv_row,
    header_lines,
    quiet_start,
    read_csv,
    summary_cell,
    welch_t,
    write_csv,
    write_json,
)
from utils.files import atomic_write_text  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402

logger = logging.getLogger("benchmarks.ablation")
ROOT = Path(__file__).resolve().parents[1]
# name -> hyp overrides. The paper's grid ('in', beta by training size) against the grids
# fitted to YOLO's targets; "best_*" rows vary the better of auto and quantile (auto, at 320 and 640 px alike)
# without the uncertainty loss and with the CIoU term. The grid rows train the paper's loss (no CIoU term: the
# study predates the term as C-BBL's default).
CONFIGS = {
    "ciou": {"box_loss": "ciou"},
    "cbbl_paper": {"box_loss": "cbbl", "cbbl_grid": "in", "cbbl_ciou": 0.0},
    "cbbl_auto": {"box_loss": "cbbl", "cbbl_grid": "auto", "cbbl_ciou": 0.0},
    "cbbl_quantile": {"box_loss": "cbbl", "cbbl_grid": "quantile", "cbbl_ciou": 0.0},
    "cbbl_uniform": {"box_loss": "cbbl", "cbbl_grid": "uniform", "cbbl_ciou": 0.0},
    "cbbl_best_no_um": {"box_loss": "cbbl", "cbbl_grid": "auto", "cbbl_um": 0.0, "cbbl_ciou": 0.0},
    "cbbl_best_ciou": {"box_loss": "cbbl", "cbbl_grid": "auto", "cbbl_ciou": 1.0},
}
METRICS = {"map50": "metrics/mAP_0.5", "map50_95": "metrics/mAP_0.5:0.95", "ap_small": "metrics/AP_small"}
SMALL_AREA = 32.0**2  # COCO's small-object bound, original-image pixels^2
GRADIENT_BATCH = 16  # validation images per forward of the gradient analysis (eval mode: no effect on figures)


def train_options(args: argparse.Namespace, config: str, seed: int):
    """TrainOptions of one run: the same model/data/schedule for every config, only the box branch differs."""
    from utils.engine.options import TrainOptions

    hyp = load_hyp(ROOT / args.hyp, warmup_epochs=args.warmup_epochs, **CONFIGS[config])
    return TrainOptions(optimizer=args.optimizer, cfg=str(model_cfg(args)), data=str(ROOT / args.data), hyp=hyp,
                        epochs=args.epochs, batch_size=args.batch, imgsz=args.img, workers=args.workers,
                        noplots=True, project=str(args.project / args.out.name),
                        name=f"{config}_s{seed}", exist_ok=True, seed=seed,
                        nbs=args.batch, save_period=1 if seed == 0 else -1, device="cpu",
                        noval=not args.val_every_epoch, amp=args.amp)


def model_cfg(args: argparse.Namespace) -> Path:
    """--cfg, or with --width-multiple a copy of it at that width in the runs folder (a cheaper model, same graph)."""
    cfg = ROOT / args.cfg
    if args.width_multiple is None:
        return cfg
    import yaml

    model = {**yaml.safe_load(cfg.read_text(encoding="utf-8")), "width_multiple": args.width_multiple}
    path = args.project / args.out.name / f"{cfg.stem}-w{args.width_multiple:g}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text(yaml.safe_dump(model, sort_keys=False), encoding="utf-8")
    return path


def run_one(args: argparse.Namespace, config: str, seed: int) -> dict:
    """Train one (config, seed); its summary row (status 'failed' with the error if it raised)."""
    from utils.engine.run import run

    opts = train_options(args, config, seed)
    head = opts.hyp.head
    cbbl = head.is_cbbl
    row = {"config": config, "seed": seed, "box_loss": head.box_loss, "grid": head.grid if cbbl else "",
           "um": head.um if cbbl else "", "ciou_term": head.ciou if cbbl else "", "epochs": args.epochs,
           "img": args.img}
    start = time.perf_counter()
    try:
        outcome = run(opts)
    except (RuntimeError, ValueError, FloatingPointError, FileNotFoundError) as err:
        logger.error("run %s seed %d failed: %s", config, seed, err)
        return {**row, "status": "failed", "error": str(err).splitlines()[0][:200],
                "wall_s": round(time.perf_counter() - start, 1)}
    curve = read_csv(Path(outcome.save_dir) / "results.csv")
    write_csv(args.out / "curves" / f"{config}_s{seed}.csv", curve)
    write_grid_mass(args, config, seed, Path(outcome.save_dir))
    last = curve[-1] if curve else {}
    figures = {name: round(float(last.get(column, "nan")), 5) for name, column in METRICS.items()}
    return {**row, "status": "ok", "error": "", **figures, "epochs_done": outcome.epochs_done,
            "amp": outcome.amp, "wall_s": round(time.perf_counter() - start, 1)}


def summarize(rows: list[dict], reference: list[dict] | None = None) -> list[dict]:
    """Per config: finished seeds, the grid used, mean and sample std of each metric (std empty below 2 seeds)
    and Welch's t against ciou; with ``reference`` (another study's runs, e.g. its float32 twin) also Welch's t
    against the same config there."""
    ok = [row for row in rows if row["status"] == "ok"]
    baseline = {name: [float(row[name]) for row in ok if row["config"] == "ciou"] for name in METRICS}
    reference_ok = [row for row in reference or [] if row["status"] == "ok"]
    summary = []
    for config in CONFIGS:
        done = [row for row in ok if row["config"] == config]
        failed = sum(row["config"] == config and row["status"] != "ok" for row in rows)
        grids = sorted({row.get("grid", "") for row in done})
        entry = {"config": config, "grid": "/".join(grids), "seeds_ok": len(done), "seeds_failed": failed}
        for name in METRICS:
            values = [float(row[name]) for row in done]
            entry[f"{name}_mean"] = round(statistics.mean(values), 5) if values else ""
            entry[f"{name}_std"] = round(statistics.stdev(values), 5) if len(values) > 1 else ""
            entry[f"{name}_t_vs_ciou"] = round(welch_t(values, baseline[name]), 2) if config != "ciou" else ""
            if reference is not None:
                twin = [float(row[name]) for row in reference_ok if row["config"] == config]
                entry[f"{name}_reference_mean"] = round(statistics.mean(twin), 5) if twin else ""
                entry[f"{name}_t_vs_reference"] = round(welch_t(values, twin), 2) if values and twin else ""
        summary.append(entry)
    return summary


def markdown_tables(summary: list[dict], grid_rows: list[dict]) -> str:
    """summary.md: the accuracy table (mean +- std, Welch t vs ciou [and vs the reference study]) and each grid's
    target mass (first seed)."""
    lines = ["| config | grid | seeds | mAP50 | mAP50-95 | AP_small |", "| --- | --- | --- | --- | --- | --- |"]
    for entry in summary:
        if not entry["seeds_ok"]:
            continue
        cells = []
        for name in METRICS:
            cell = summary_cell(entry, name, ["t_vs_ciou"], 3)
            if entry.get(f"{name}_t_vs_reference", "") != "":
                cell += (f"; reference {float(entry[f'{name}_reference_mean']):.3f} "
                         f"(t {float(entry[f'{name}_t_vs_reference']):+.1f})")
            cells.append(cell)
        lines.append(f"| {entry['config']} | {entry['grid'] or '-'} | {entry['seeds_ok']} | {' | '.join(cells)} |")
    lines += ["", "| config | group | beta | points | % of training targets per interval |",
              "| --- | --- | --- | --- | --- |"]
    first_seed: dict[tuple, dict] = {}
    for row in grid_rows:
        first_seed.setdefault((row["config"], row["group"]), row)
    for row in first_seed.values():
        beta = f"{float(row['beta']):.2f}" if row["beta"] else "-"
        lines.append(f"| {row['config']} | {row['group']} | {beta} | {row['points']} | {row['mass_pct']} |")
    return "\n".join(lines) + "\n"


def pending_runs(args: argparse.Namespace, rows: list[dict]) -> list[tuple[str, int]]:
    """(config, seed) pairs without a row yet, seed-major (a study cut short by its budget keeps every config
    at the same number of seeds)."""
    finished = {(row["config"], int(row["seed"])) for row in rows if row["status"] == "ok" or not args.retry_failed}
    return [(config, seed) for seed in args.seeds for config in args.configs if (config, seed) not in finished]


def write_grid_mass(args: argparse.Namespace, config: str, seed: int, save_dir: Path) -> None:
    """The run's C-BBL grid and the % of its training targets per interval, appended to grid_mass.csv."""
    from models.yolo import model_from_checkpoint
    from utils.checkpoint import load_checkpoint
    from utils.data.config import load_data_config
    from utils.data.dataset import create_dataloader
    from utils.engine.grid_fit import assigned_offsets, grid_mass, letterboxed_targets

    path = save_dir / "weights" / "last.pt"
    model = model_from_checkpoint(load_checkpoint(path))
    head = model.detect.head
    if not head.is_cbbl:
        return
    data = load_data_config(str(ROOT / args.data))
    _, dataset = create_dataloader(data["train"], args.img, 1, int(model.stride.max()), workers=0, prefix="")
    targets = letterboxed_targets(dataset.labels, dataset.shapes, args.img)
    offsets = assigned_offsets(targets, model.detect.anchors, model.detect.stride, args.img, head.anchor_t, head.space)
    for row in grid_mass(head, offsets):
        append_csv_row(args.out / "grid_mass.csv", {
            "config": config, "seed": seed, "grid": head.grid, "group": row["group"],
            "beta": "" if row["beta"] is None else row["beta"], "points": " ".join(f"{p:.3f}" for p in row["points"]),
            "mass_pct": " ".join(f"{m:.1f}" for m in row["mass_pct"])})


def object_gradient_norms(model, loss_fn, images: torch.Tensor, targets: torch.Tensor,
                          pixel_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per positive: the norm of d(its box loss)/d(raw box outputs), its GT area in original pixels, and
    (C-BBL) the mean entropy of its 4 predicted distributions in nats (NaN for regression).

    Args:
        images: (B, 3, H, W) float in [0, 1]; targets (M, 6) ``[img, cls, cx, cy, w, h]`` normalised.
        pixel_scale: (B,) original pixels per network pixel (1 / letterbox ratio).
    Returns:
        norms (P,), areas (P,), entropies (P,) over all levels.
    """
    from utils.assign import assign_level
    from utils.cbbl.distribution import entropy

    detect = loss_fn.detect
    with torch.no_grad():
        raw_levels = model(images)[1]  # eval mode: (pred, raw); raw[l] (B, A, H, W, no)
    norms, areas, entropies = [], [], []
    for level, raw in enumerate(raw_levels):
        assigned = assign_level(targets, detect.anchors[level], tuple(raw.shape[2:4]), detect.head.anchor_t)
        if not len(assigned.gt):
            continue
        positive = raw[assigned.batch, assigned.anchor, assigned.cell_y, assigned.cell_x, :detect.box_channels]
        positive = positive.float().detach().requires_grad_(True)  # (P, box_channels)
        _, mean_loss = loss_fn.box_term(positive, assigned)
        (grad,) = torch.autograd.grad(mean_loss * len(positive), positive)  # each row: its own loss's gradient
        norms.append(grad.norm(dim=1))
        size_px = assigned.box[:, 2:] * detect.stride[level] * pixel_scale[assigned.batch, None]  # (P, 2)
        areas.append(size_px.prod(1))
        if detect.grid is None:
            entropies.append(torch.full_like(norms[-1], float("nan")))
        else:
            entropies.append(entropy(positive.detach().view(-1, 4, detect.head.bins)).mean(1))  # (P,)
    if not norms:
        return torch.zeros(0), torch.zeros(0), torch.zeros(0)
    return torch.cat(norms), torch.cat(areas), torch.cat(entropies)


def analyse_checkpoint(path: Path, batches: list) -> dict:
    """Mean / median gradient norm of small and normal objects (and C-BBL's mean entropy) for one checkpoint."""
    from models.yolo import model_from_checkpoint
    from utils.checkpoint import load_checkpoint
    from utils.hyp import load_hyp
    from utils.loss import ComputeLoss, LossSettings

    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, use_ema=False).float().eval()
    hyp = load_hyp(checkpoint["hyp"])
    loss_fn = ComputeLoss(model, LossSettings.from_hyp(hyp), imgsz=int(checkpoint["opt"]["imgsz"]))
    parts = [object_gradient_norms(model, loss_fn, images, targets, scale) for images, targets, scale in batches]
    norms, areas, entropies = (torch.cat(column) for column in zip(*parts))
    row = {"positive_entropy": float(entropies.mean())}
    for group, mask in (("small", areas < SMALL_AREA), ("normal", areas >= SMALL_AREA)):
        values = norms[mask]
        row[f"{group}_positives"] = int(mask.sum())
        row[f"{group}_mean"] = float(values.mean()) if len(values) else float("nan")
        row[f"{group}_median"] = float(values.median()) if len(values) else float("nan")
    row["ratio_small_normal"] = row["small_mean"] / row["normal_mean"]
    return row


def fixed_batches(data_yaml: str, imgsz: int, num_images: int) -> list:
    """The first validation images (no augmentation) in batches: (images float, targets, original px per network
    px)."""
    from utils.data.config import load_data_config
    from utils.data.dataset import create_dataloader

    data = load_data_config(data_yaml)
    loader, _ = create_dataloader(data["val"], imgsz, GRADIENT_BATCH, 32, augment=False, rect=False, workers=0)
    batches = []
    for index, (images, targets, _, shapes) in enumerate(loader):
        if index * GRADIENT_BATCH >= num_images:
            break
        ratio = torch.tensor([min(shape[1][0]) for shape in shapes], dtype=torch.float32)  # (B,)
        batches.append((images.float() / 255, targets, 1 / ratio))
    return batches


def epoch_checkpoints(weights_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of weights/epoch{N}.pt, sorted by epoch."""
    found = [(int(match.group(1)), path) for path in weights_dir.glob("epoch*.pt")
             if (match := re.fullmatch(r"epoch(\d+)\.pt", path.name))]
    return sorted(found)


def gradients(args: argparse.Namespace) -> int:
    """--gradients: the first and last epoch of every seed-0 run of the study, into <out>/gradients.{csv,json}."""
    runs_dir = args.project / args.out.name
    found = {config: epoch_checkpoints(runs_dir / f"{config}_s0" / "weights") for config in args.configs}
    found = {config: checkpoints[::len(checkpoints) - 1 or 1] for config, checkpoints in found.items() if checkpoints}
    if not found:
        logger.error("no weights/epoch*.pt under %s: train the study's seed 0 first (it saves every epoch)", runs_dir)
        return 2
    batches = fixed_batches(str(ROOT / args.data), args.img, args.gradient_images)
    rows = []
    for config, checkpoints in found.items():
        for epoch, path in checkpoints:
            rows.append({"config": config, "run": f"{config}_s0", "epoch": epoch, **analyse_checkpoint(path, batches)})
            logger.info("%s epoch %d: small/normal %.3f (%d / %d positives), entropy %.3f", config, epoch,
                        rows[-1]["ratio_small_normal"], rows[-1]["small_positives"], rows[-1]["normal_positives"],
                        rows[-1]["positive_entropy"])
    write_csv(args.out / "gradients.csv", rows)
    write_json(args.out / "gradients.json", {"header": header_lines({k: str(v) for k, v in vars(args).items()}),
                                             "rows": rows})
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="C-BBL ablation at small scale (resumable)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cfg", default="models/yolov5n.yaml")
    parser.add_argument("--width-multiple", type=float, default=None,
                        help="train --cfg at this width instead (e.g. 0.125: ~4x cheaper steps on a loaded CPU)")
    parser.add_argument("--data", default="data/synthetic.yaml")
    parser.add_argument("--hyp", default="data/hyps/hyp.demo.yaml", help="base hyperparameters of every run "
                        "(train.py's default recipe: AdamW at lr0 0.0032)")
    parser.add_argument("--optimizer", default=None, help="default: the hyp file's (YOLOv5's SGD recipe learned "
                        "nothing measurable at this budget)")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="also the nominal batch: no accumulation")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 because on an oversubscribed CPU 2 spinning OpenMP threads per "
                             "process made a training step ~10x slower (measured 30 s vs 3 s)")
    parser.add_argument("--val-every-epoch", action="store_true",
                        help="validate after every epoch (default: only after the last; early-epoch validation "
                             "is NMS-bound, thousands of low-confidence boxes per image, and costs more than training)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision where train.py's automatic check passes (bfloat16 on CPUs with AMX or "
                             "AVX512-BF16); default float32, the recipe of the committed studies")
    parser.add_argument("--reference", type=Path, default=None,
                        help="another study's results folder (e.g. this study's float32 twin): the summary adds "
                             "each metric's mean there and Welch's t of this study's config against it")
    parser.add_argument("--budget-min", type=float, default=45.0, help="start no new run after this many minutes")
    parser.add_argument("--retry-failed", action="store_true", help="run failed (config, seed) pairs again")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing: rewrite summary.csv and summary.md from runs.csv (after parallel shards)")
    parser.add_argument("--gradients", action="store_true",
                        help="train nothing: box-loss gradients of the seed-0 runs' first and last epoch")
    parser.add_argument("--gradient-images", type=int, default=32, help="validation images of --gradients")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ablation",
                        help="results folder (runs.csv, summary.csv, curves)")
    parser.add_argument("--project", type=Path, default=ROOT / "runs" / "ablation",
                        help="the runs train in <project>/<name of --out>/<config>_s<seed>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_start(logger, args.threads)
    if args.gradients:
        return gradients(args)
    out_dir = args.out
    runs_csv = out_dir / "runs.csv"
    header = header_lines({key: str(value) for key, value in vars(args).items()})
    if not args.summary_only:
        write_json(out_dir / "settings.json", {"header": header})
    start = time.perf_counter()
    for config, seed in [] if args.summary_only else pending_runs(args, read_csv(runs_csv)):
        if (time.perf_counter() - start) / 60 > args.budget_min:
            logger.info("budget of %.0f min spent: stopping before %s seed %d", args.budget_min, config, seed)
            break
        row = run_one(args, config, seed)
        append_csv_row(runs_csv, row)
        logger.info("%s seed %d: %s", config, seed, {k: row.get(k) for k in (*METRICS, "wall_s", "status")})
    summary = summarize(read_csv(runs_csv), read_csv(args.reference / "runs.csv") if args.reference else None)
    write_csv(out_dir / "summary.csv", summary)
    atomic_write_text(out_dir / "summary.md", markdown_tables(summary, read_csv(out_dir / "grid_mass.csv")))
    logger.info("\n".join(header))
    for entry in summary:
        cells = [f"{name} {entry[f'{name}_mean']!s:>8} +- {entry[f'{name}_std']!s:<8}" for name in METRICS]
        logger.info("%-20s n=%d failed=%d  %s", entry["config"], entry["seeds_ok"], entry["seeds_failed"],
                    "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
