"""The C-BBL ablation at small scale (paper Tables 1-3), on the synthetic small-object data, CPU budget.

    python benchmarks/ablation.py                      # every config x 3 seeds, resumable
    python benchmarks/ablation.py --configs ciou cbbl_ce_um_in --seeds 1 2 --budget-min 35

Trains the same small model once per (config, seed) through the library entry point
utils.engine.run.run, appends each finished run's row (last-epoch mAP50, mAP50-95, AP_small, wall
time, or the failure) to benchmarks/results/ablation/runs.csv at once, and skips finished rows on a
rerun. Then writes summary.csv (mean and sample std over seeds) and curves.png (validation mAP50-95
and training box loss per epoch, mean over seeds). Tiny-budget figures: read the spread, not the digits.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import RESULTS_DIR, append_csv_row, header_lines, read_csv, write_csv, write_json  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.log import setup_logging  # noqa: E402

logger = logging.getLogger("benchmarks.ablation")
ROOT = Path(__file__).resolve().parents[1]
# name -> hyp overrides. The first six are paper Table 1's rows (all at K=11, expectation); the last two vary
# the grid size (Table 2) and the restoration (Table 3) of the full C-BBL.
CONFIGS = {
    "ciou": {"box_loss": "ciou"},
    "l1": {"box_loss": "l1"},
    "smooth_l1": {"box_loss": "smooth_l1"},
    "cbbl_ce": {"box_loss": "cbbl", "cbbl_um": 0.0, "cbbl_in": False},
    "cbbl_ce_um": {"box_loss": "cbbl", "cbbl_um": 1.0, "cbbl_in": False},
    "cbbl_ce_um_in": {"box_loss": "cbbl", "cbbl_um": 1.0, "cbbl_in": True},
    "cbbl_ce_um_in_k7": {"box_loss": "cbbl", "cbbl_bins": 7},
    "cbbl_ce_um_in_top2": {"box_loss": "cbbl", "cbbl_restore": "top2"},
}
CORE_CONFIGS = ("ciou", "cbbl_ce_um_in")  # baseline vs the paper's full C-BBL: run first, all seeds
METRICS = {"map50": "metrics/mAP_0.5", "map50_95": "metrics/mAP_0.5:0.95", "ap_small": "metrics/AP_small"}


def train_options(args: argparse.Namespace, config: str, seed: int):
    """TrainOptions of one run: the same model/data/schedule for every config, only the box branch differs."""
    from utils.engine.options import TrainOptions

    hyp = load_hyp(ROOT / args.hyp, warmup_epochs=args.warmup_epochs, **CONFIGS[config])
    return TrainOptions(optimizer=args.optimizer, cfg=str(ROOT / args.cfg), data=str(ROOT / args.data), hyp=hyp,
                        epochs=args.epochs, batch_size=args.batch, imgsz=args.img, workers=args.workers,
                        noplots=True, project=str(ROOT / "runs" / "ablation" / args.out.name),
                        name=f"{config}_s{seed}", exist_ok=True, seed=seed,
                        nbs=args.batch, save_period=1 if seed == 0 else -1, device="cpu",
                        noval=not args.val_every_epoch)


def run_one(args: argparse.Namespace, config: str, seed: int) -> dict:
    """Train one (config, seed); its summary row (status 'failed' with the error if it raised)."""
    from utils.engine.run import run

    opts = train_options(args, config, seed)
    hyp = opts.hyp
    row = {"config": config, "seed": seed, "box_loss": hyp.box_loss, "bins": hyp.cbbl_bins if hyp.is_cbbl else "",
           "um": hyp.cbbl_um if hyp.is_cbbl else "", "in_labels": hyp.cbbl_in if hyp.is_cbbl else "",
           "restore": hyp.cbbl_restore if hyp.is_cbbl else "", "epochs": args.epochs, "img": args.img}
    start = time.perf_counter()
    try:
        outcome = run(opts)
    except (RuntimeError, ValueError, FloatingPointError, FileNotFoundError) as err:
        logger.error("run %s seed %d failed: %s", config, seed, err)
        return {**row, "status": "failed", "error": str(err).splitlines()[0][:200],
                "wall_s": round(time.perf_counter() - start, 1)}
    curve = read_csv(Path(outcome.save_dir) / "results.csv")
    write_csv(args.out / "curves" / f"{config}_s{seed}.csv", curve)
    last = curve[-1] if curve else {}
    figures = {name: round(float(last.get(column, "nan")), 5) for name, column in METRICS.items()}
    return {**row, "status": "ok", "error": "", **figures, "epochs_done": outcome.epochs_done,
            "wall_s": round(time.perf_counter() - start, 1)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per config: number of finished seeds, mean and sample std of each metric (std empty below 2 seeds)."""
    summary = []
    for config in CONFIGS:
        done = [row for row in rows if row["config"] == config and row["status"] == "ok"]
        failed = sum(row["config"] == config and row["status"] != "ok" for row in rows)
        entry = {"config": config, "seeds_ok": len(done), "seeds_failed": failed}
        for name in METRICS:
            values = [float(row[name]) for row in done]
            entry[f"{name}_mean"] = round(statistics.mean(values), 5) if values else ""
            entry[f"{name}_std"] = round(statistics.stdev(values), 5) if len(values) > 1 else ""
        summary.append(entry)
    return summary


def plot_curves(out_dir: Path, summary: list[dict]) -> None:
    """out_dir/curves.png: training box and objectness loss per epoch (mean over seeds), final mAP50-95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for config in CONFIGS:
        curves = [c for c in (read_csv(p) for p in sorted((out_dir / "curves").glob(f"{config}_s*.csv"))) if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        for axis, column in zip(axes[:2], ("train/box_loss", "train/obj_loss")):
            mean = [statistics.mean(float(c[i][column]) for c in curves) for i in range(length)]
            axis.plot(range(length), mean, marker="o", markersize=3, label=f"{config} (n={len(curves)})")
    axes[0].set(xlabel="epoch", ylabel="box loss (each loss on its own scale)", title="training box loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="objectness loss", title="training objectness loss")
    axes[0].legend(fontsize=7)
    done = [entry for entry in summary if entry["seeds_ok"]]
    means = [float(entry["map50_95_mean"]) for entry in done]
    stds = [float(entry["map50_95_std"] or 0) for entry in done]
    axes[2].barh([entry["config"] for entry in done], means, xerr=stds, capsize=3)
    axes[2].set(xlabel="val mAP@0.5:0.95 after training (mean +- std over seeds)", title="final accuracy")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)


def pending_runs(args: argparse.Namespace, rows: list[dict]) -> list[tuple[str, int]]:
    """(config, seed) pairs without a row yet: the CORE_CONFIGS over all seeds first (the main question),
    then the rest seed-major, so a study cut short by its budget still answers as much as it can."""
    finished = {(row["config"], int(row["seed"])) for row in rows if row["status"] == "ok" or not args.retry_failed}
    core = [(config, seed) for seed in args.seeds for config in args.configs if config in CORE_CONFIGS]
    rest = [(config, seed) for seed in args.seeds for config in args.configs if config not in CORE_CONFIGS]
    return [pair for pair in core + rest if pair not in finished]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="C-BBL ablation at small scale (resumable)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cfg", default="models/yolov5n.yaml")
    parser.add_argument("--data", default="data/synthetic.yaml")
    parser.add_argument("--hyp", default="data/hyps/hyp.demo.yaml", help="base hyperparameters of every run "
                        "(train.py's default recipe: AdamW at lr0 0.0032)")
    parser.add_argument("--optimizer", default=None, help="default: the hyp file's (SGD at this budget learned "
                        "nothing measurable: see benchmarks/results/ablation_sgd192)")
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
    parser.add_argument("--budget-min", type=float, default=45.0, help="start no new run after this many minutes")
    parser.add_argument("--retry-failed", action="store_true", help="run failed (config, seed) pairs again")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ablation",
                        help="results folder (runs.csv, summary.csv, curves); runs train in runs/ablation/<its name>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging(verbose=False)
    logger.setLevel(logging.INFO)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = args.out
    runs_csv = out_dir / "runs.csv"
    header = header_lines({key: str(value) for key, value in vars(args).items()})
    write_json(out_dir / "settings.json", {"header": header})
    start = time.perf_counter()
    for config, seed in pending_runs(args, read_csv(runs_csv)):
        if (time.perf_counter() - start) / 60 > args.budget_min:
            logger.info("budget of %.0f min spent: stopping before %s seed %d", args.budget_min, config, seed)
            break
        row = run_one(args, config, seed)
        append_csv_row(runs_csv, row)
        logger.info("%s seed %d: %s", config, seed, {k: row.get(k) for k in (*METRICS, "wall_s", "status")})
    summary = summarize(read_csv(runs_csv))
    write_csv(out_dir / "summary.csv", summary)
    plot_curves(out_dir, summary)
    logger.info("\n".join(header))
    for entry in summary:
        cells = [f"{name} {entry[f'{name}_mean']!s:>8} +- {entry[f'{name}_std']!s:<8}" for name in METRICS]
        logger.info("%-20s n=%d failed=%d  %s", entry["config"], entry["seeds_ok"], entry["seeds_failed"],
                    "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
