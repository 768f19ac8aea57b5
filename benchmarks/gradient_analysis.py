"""Box-loss gradients of small vs normal-size objects across training (the paper's motivation, Fig. 1-2, 5).

    python benchmarks/ablation.py --seeds 0              # makes the epoch checkpoints of every config
    python benchmarks/gradient_analysis.py --first-last  # the first and last epoch of each

For every epoch checkpoint of the seed-0 ablation runs (weights/epoch{N}.pt, model weights, not EMA)
and a fixed set of validation images, each positive anchor's box loss is differentiated with respect
to the head's raw box outputs (4 regression values, or 4*K C-BBL logits); the per-positive norm is then
averaged over the positives of small (< 32x32 px in the original image, COCO) and of normal-size
objects (an object has several positives: anchors and neighbour cells).
The comparable figure between losses is the small / normal ratio (the raw scales differ by loss).
Writes benchmarks/results/gradient_analysis.{csv,json,png}.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ablation import CONFIGS  # noqa: E402
from benchmarks.common import RESULTS_DIR, header_lines, quiet_start, write_csv, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.gradient_analysis")
ROOT = Path(__file__).resolve().parents[1]
SMALL_AREA = 32.0**2  # COCO's small-object bound, original-image pixels^2


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
            entropies.append(entropy(positive.detach().view(-1, 4, detect.bins)).mean(1))  # (P,)
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


def fixed_batches(data_yaml: str, imgsz: int, num_batches: int, batch_size: int) -> list:
    """The first validation batches (no augmentation) as (images float, targets, original px per network px)."""
    from utils.data.config import load_data_config
    from utils.data.dataset import create_dataloader

    data = load_data_config(data_yaml)
    loader, _ = create_dataloader(data["val"], imgsz, batch_size, 32, augment=False, rect=False, workers=0)
    batches = []
    for index, (images, targets, _, shapes) in enumerate(loader):
        if index == num_batches:
            break
        ratio = torch.tensor([min(shape[1][0]) for shape in shapes], dtype=torch.float32)  # (B,)
        batches.append((images.float() / 255, targets, 1 / ratio))
    return batches


def epoch_checkpoints(weights_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of weights/epoch{N}.pt, sorted by epoch."""
    found = [(int(match.group(1)), path) for path in weights_dir.glob("epoch*.pt")
             if (match := re.fullmatch(r"epoch(\d+)\.pt", path.name))]
    return sorted(found)


def plot(rows: list[dict], path: Path) -> None:
    """Per loss: small and normal mean norm vs epoch; and the small/normal ratio of every loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(row["config"] for row in rows))
    fig, axes = plt.subplots(1, len(configs) + 1, figsize=(5 * (len(configs) + 1), 4))
    for axis, config in zip(axes, configs):
        mine = [row for row in rows if row["config"] == config]
        for group in ("small", "normal"):
            axis.plot([r["epoch"] for r in mine], [r[f"{group}_mean"] for r in mine], marker="o", label=group)
        axis.set(title=f"{config}: |d box loss / d raw box|", xlabel="epoch", ylabel="mean per-positive norm")
        axis.legend()
    for config in configs:
        mine = [row for row in rows if row["config"] == config]
        axes[-1].plot([r["epoch"] for r in mine], [r["ratio_small_normal"] for r in mine], marker="o", label=config)
    axes[-1].axhline(1.0, color="grey", linewidth=0.8)
    axes[-1].set(title="small / normal gradient norm", xlabel="epoch", ylabel="ratio")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Small vs normal-object box-loss gradient norms across training")
    parser.add_argument("--runs", nargs="+", default=[f"{config}_s0" for config in CONFIGS],
                        help="run folders (under --runs-dir) holding weights/epoch{N}.pt")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "ablation" / "ablation")
    parser.add_argument("--first-last", action="store_true", help="only the first and last epoch of each run")
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic.yaml"))
    parser.add_argument("--img", type=int, default=192, help="as the ablation runs were trained")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a shared, busy CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gradient_analysis")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_start(logger, args.threads)
    found = {run: epoch_checkpoints(args.runs_dir / run / "weights") for run in args.runs}
    found = {run: checkpoints[::len(checkpoints) - 1 or 1] if args.first_last else checkpoints
             for run, checkpoints in found.items() if checkpoints}
    if not found:
        logger.error("no weights/epoch*.pt under %s for %s: run `python benchmarks/ablation.py --seeds 0` first "
                     "(seed-0 runs save every epoch)", args.runs_dir, args.runs)
        return 2
    batches = fixed_batches(args.data, args.img, args.batches, args.batch)
    rows = []
    for run, checkpoints in found.items():
        for epoch, path in checkpoints:
            figures = analyse_checkpoint(path, batches)
            rows.append({"config": run.rsplit("_s", 1)[0], "run": run, "epoch": epoch, **figures})
            logger.info("%s epoch %d: small %.4g (%d positives), normal %.4g (%d), ratio %.3f, entropy %.3f", run,
                        epoch, figures["small_mean"], figures["small_positives"], figures["normal_mean"],
                        figures["normal_positives"], figures["ratio_small_normal"], figures["positive_entropy"])
    header = header_lines({key: str(value) for key, value in vars(args).items()})
    logger.info("\n".join(header))
    for config in dict.fromkeys(row["config"] for row in rows):
        ratios = [row["ratio_small_normal"] for row in rows if row["config"] == config]
        logger.info("%s: small/normal ratio first %.3f last %.3f mean %.3f", config, ratios[0], ratios[-1],
                    statistics.mean(ratios))
    write_csv(args.out.with_suffix(".csv"), rows)
    write_json(args.out.with_suffix(".json"), {"header": header, "rows": rows})
    plot(rows, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
