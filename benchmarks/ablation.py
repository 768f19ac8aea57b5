"""The C-BBL grid study at small scale (issue 13), on the synthetic small-object data, CPU budget.

    python benchmarks/ablation.py                      # every config x 3 seeds, resumable
    python benchmarks/ablation.py --configs ciou cbbl_paper --seeds 1 2 --budget-min 35

Trains the same small model once per (config, seed) through the library entry point
utils.engine.run.run, appends each finished run's row (last-epoch mAP50, mAP50-95, AP_small, wall
time, or the failure) to benchmarks/results/ablation/runs.csv at once, and skips finished rows on a
rerun, and each C-BBL run's grid with the % of training targets per interval to grid_mass.csv. Then writes
summary.csv (mean, sample std over seeds, Welch's t against ciou) and curves.png (training losses per epoch,
mean over seeds). Tiny-budget figures: read the spread, not the digits.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    append_csv_row,
    header_lines,
    quiet_start,
    read_csv,
    welch_t,
    write_csv,
    write_json,
)
from utils.hyp import load_hyp  # noqa: E402

logger = logging.getLogger("benchmarks.ablation")
ROOT = Path(__file__).resolve().parents[1]
# name -> hyp overrides (issue 13's study). The paper's grid ('in', beta by training size) against the grids
# fitted to YOLO's targets; "best_*" rows vary the better of auto/quantile (by mean mAP50-95 so far, decided
# when those rows start; BEST_OF) without the uncertainty loss and with an extra CIoU term.
CONFIGS = {
    "ciou": {"box_loss": "ciou"},
    "cbbl_paper": {"box_loss": "cbbl", "cbbl_grid": "in"},
    "cbbl_auto": {"box_loss": "cbbl", "cbbl_grid": "auto"},
    "cbbl_quantile": {"box_loss": "cbbl", "cbbl_grid": "quantile"},
    "cbbl_uniform": {"box_loss": "cbbl", "cbbl_grid": "uniform"},
    "cbbl_best_no_um": {"box_loss": "cbbl", "cbbl_um": 0.0},
    "cbbl_best_ciou": {"box_loss": "cbbl", "cbbl_ciou": 1.0},
}
BEST_OF = ("cbbl_auto", "cbbl_quantile")
BEST_VARIANTS = ("cbbl_best_no_um", "cbbl_best_ciou")
METRICS = {"map50": "metrics/mAP_0.5", "map50_95": "metrics/mAP_0.5:0.95", "ap_small": "metrics/AP_small"}


def best_grid(rows: list[dict]) -> str:
    """The grid of BEST_OF with the higher mean mAP50-95 over finished runs (auto on a tie or without runs)."""
    means = {}
    for config in BEST_OF:
        values = [float(row["map50_95"]) for row in rows if row["config"] == config and row["status"] == "ok"]
        means[config] = statistics.mean(values) if values else float("-inf")
    best = max(BEST_OF, key=lambda config: (means[config], config == "cbbl_auto"))
    return CONFIGS[best]["cbbl_grid"]


def config_overrides(config: str, rows: list[dict]) -> dict:
    """Hyp overrides of a config; the best_* variants take the grid best_grid picks from ``rows``."""
    overrides = dict(CONFIGS[config])
    if config in BEST_VARIANTS:
        overrides["cbbl_grid"] = best_grid(rows)
    return overrides


def train_options(args: argparse.Namespace, config: str, seed: int, rows: list[dict]):
    """TrainOptions of one run: the same model/data/schedule for every config, only the box branch differs."""
    from utils.engine.options import TrainOptions

    hyp = load_hyp(ROOT / args.hyp, warmup_epochs=args.warmup_epochs, **config_overrides(config, rows))
    return TrainOptions(optimizer=args.optimizer, cfg=str(model_cfg(args)), data=str(ROOT / args.data), hyp=hyp,
                        epochs=args.epochs, batch_size=args.batch, imgsz=args.img, workers=args.workers,
                        noplots=True, project=str(args.project / args.out.name),
                        name=f"{config}_s{seed}", exist_ok=True, seed=seed,
                        nbs=args.batch, save_period=1 if seed == 0 else -1, device="cpu",
                        noval=not args.val_every_epoch)


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


def run_one(args: argparse.Namespace, config: str, seed: int, rows: list[dict]) -> dict:
    """Train one (config, seed); its summary row (status 'failed' with the error if it raised)."""
    from utils.engine.run import run

    opts = train_options(args, config, seed, rows)
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
            "wall_s": round(time.perf_counter() - start, 1)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per config: finished seeds, the grid used, mean and sample std of each metric (std empty below 2 seeds)
    and Welch's t against ciou."""
    ok = [row for row in rows if row["status"] == "ok"]
    baseline = {name: [float(row[name]) for row in ok if row["config"] == "ciou"] for name in METRICS}
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
        summary.append(entry)
    return summary


def markdown_tables(summary: list[dict], grid_rows: list[dict]) -> str:
    """summary.md: the accuracy table (mean +- std, Welch t vs ciou) and each grid's target mass (first seed)."""
    lines = ["| config | grid | seeds | mAP50 | mAP50-95 | AP_small |", "| --- | --- | --- | --- | --- | --- |"]
    for entry in summary:
        if not entry["seeds_ok"]:
            continue
        cells = []
        for name in METRICS:
            cell = f"{float(entry[f'{name}_mean']):.3f}"
            if entry[f"{name}_std"] != "":
                cell += f" +- {float(entry[f'{name}_std']):.3f}"
            if entry[f"{name}_t_vs_ciou"] != "":
                cell += f" (t {float(entry[f'{name}_t_vs_ciou']):+.1f})"
            cells.append(cell)
        lines.append(f"| {entry['config']} | {entry['grid'] or '-'} | {entry['seeds_ok']} | {' | '.join(cells)} |")
    lines += ["", "| config | group | beta | points | % of training targets per interval |",
              "| --- | --- | --- | --- | --- |"]
    shown = set()
    for row in grid_rows:
        if (row["config"], row["group"]) in shown:
            continue
        shown.add((row["config"], row["group"]))
        beta = f"{float(row['beta']):.2f}" if row["beta"] else "-"
        lines.append(f"| {row['config']} | {row['group']} | {beta} | {row['points']} | {row['mass_pct']} |")
    return "\n".join(lines) + "\n"


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
    """(config, seed) pairs without a row yet, seed-major (a study cut short by its budget keeps every config
    at the same number of seeds), the best_* variants last (they need the auto/quantile results)."""
    finished = {(row["config"], int(row["seed"])) for row in rows if row["status"] == "ok" or not args.retry_failed}
    first = [(config, seed) for seed in args.seeds for config in args.configs if config not in BEST_VARIANTS]
    last = [(config, seed) for seed in args.seeds for config in args.configs if config in BEST_VARIANTS]
    return [pair for pair in first + last if pair not in finished]


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
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing: rewrite summary.csv and curves.png from runs.csv (after parallel shards)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ablation",
                        help="results folder (runs.csv, summary.csv, curves)")
    parser.add_argument("--project", type=Path, default=ROOT / "runs" / "ablation",
                        help="the runs train in <project>/<name of --out>/<config>_s<seed>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_start(logger, args.threads)
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
        row = run_one(args, config, seed, read_csv(runs_csv))
        append_csv_row(runs_csv, row)
        logger.info("%s seed %d: %s", config, seed, {k: row.get(k) for k in (*METRICS, "wall_s", "status")})
    summary = summarize(read_csv(runs_csv))
    write_csv(out_dir / "summary.csv", summary)
    (out_dir / "summary.md").write_text(markdown_tables(summary, read_csv(out_dir / "grid_mass.csv")), encoding="utf-8")
    plot_curves(out_dir, summary)
    logger.info("\n".join(header))
    for entry in summary:
        cells = [f"{name} {entry[f'{name}_mean']!s:>8} +- {entry[f'{name}_std']!s:<8}" for name in METRICS]
        logger.info("%-20s n=%d failed=%d  %s", entry["config"], entry["seeds_ok"], entry["seeds_failed"],
                    "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
