"""Why C-BBL trails CIoU on real frames: how much of the gradient reaching the shared features is the box term's.

    python benchmarks/gradient_share.py --runs runs/visdrone_real/visdrone_real/ciou_s0 \
        runs/visdrone_real/visdrone_real/cbbl_s0 --data datasets/visdrone-real/visdrone-real.yaml

Each run folder holds a finished fine-tuning run (weights/best.pt). Two states per run: ``start``, the model
training starts from (the COCO weights transferred as train.py transfers them, the run's own head: its fitted
C-BBL grid and anchors), and ``trained`` (best.pt, model weights). On a fixed set of training frames
(letterboxed, no augmentation), the loss is split into its box, objectness and class terms (each with the
gain training gives it) and each term is differentiated with respect to the features the head's final
convolutions read (every level). Reported per run and state: the norm of each term's gradient, the box
term's share of the three, and the cosine between the box gradient and the objectness + class gradient
(negative: the box term pulls the shared features against detection). Writes
benchmarks/results/gradient_share.{csv,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, header_lines, quiet_start, write_csv, write_json  # noqa: E402
from models.yolo import Model, model_from_checkpoint  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.data.config import load_data_config  # noqa: E402
from utils.data.dataset import create_dataloader  # noqa: E402
from utils.engine.transfer import transfer_weights  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.loss import ComputeLoss, LossSettings  # noqa: E402

logger = logging.getLogger("benchmarks.gradient_share")
TERMS = ("box", "obj", "cls")


def start_model(checkpoint: dict, pretrained: Path) -> Model:
    """The run's graph and head (fitted grid, anchors) with the pretrained weights transferred, as at epoch 0."""
    trained = model_from_checkpoint(checkpoint, use_ema=False)
    model = Model(checkpoint["model_yaml"])
    transfer_weights(model, load_checkpoint(pretrained), f"--weights {pretrained}")
    with torch.no_grad():
        model.detect.anchors.copy_(trained.detect.anchors)
    return model


def term_gradients(model: Model, criterion_settings: LossSettings, batches: list, imgsz: int) -> dict[str, float]:
    """Summed over ``batches``: per-term squared gradient norms at the head's inputs and the box/rest dot."""
    features: list[torch.Tensor] = []
    hooks = [conv.register_forward_pre_hook(lambda _m, args: features.append(args[0])) for conv in model.detect.m]
    criteria = {term: ComputeLoss(model, dataclasses.replace(criterion_settings, **{
        other: 0.0 for other in TERMS if other != term}), imgsz=imgsz) for term in TERMS}
    sums = {"box": 0.0, "obj": 0.0, "cls": 0.0, "box_dot_rest": 0.0, "rest": 0.0}
    model.train()
    for module in model.modules():  # batch statistics stay the checkpoint's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    for images, targets, _, _ in batches:
        features.clear()
        raw = model(images.float() / 255)
        grads = {}
        for term in TERMS:
            total, _ = criteria[term](raw, targets)
            grads[term] = torch.cat([g.flatten() for g in torch.autograd.grad(total, features, retain_graph=True)])
        rest = grads["obj"] + grads["cls"]
        for term in TERMS:
            sums[term] += float(grads[term].square().sum())
        sums["box_dot_rest"] += float(grads["box"] @ rest)
        sums["rest"] += float(rest.square().sum())
    for hook in hooks:
        hook.remove()
    return sums


def summarize(run: str, state: str, sums: dict[str, float]) -> dict[str, object]:
    norms = {term: sums[term] ** 0.5 for term in TERMS}
    return {"run": run, "state": state, **{f"grad_{term}": round(norms[term], 6) for term in TERMS},
            "box_share": round(norms["box"] / max(sum(norms.values()), 1e-12), 4),
            "cos_box_vs_obj_cls": round(sums["box_dot_rest"] / max((sums["box"] * sums["rest"]) ** 0.5, 1e-12), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Box-term share of the gradient at the shared features")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders (weights/best.pt)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset YAML the runs trained on")
    parser.add_argument("--weights", type=Path, default=Path("../shared/weights/yolov5n-coco-v6.1.pt"),
                        help="the pretrained weights the runs started from")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gradient_share")
    args = parser.parse_args()
    quiet_start(logger, threads=1)
    data = load_data_config(args.data, splits=("train",))
    rows = []
    for run in args.runs:
        checkpoint = load_checkpoint(run / "weights" / "best.pt")
        trained = model_from_checkpoint(checkpoint, use_ema=False)
        stride = int(trained.stride.max())
        loader, _ = create_dataloader(data["train"], args.img, args.batch, stride, augment=False, workers=0,
                                      shuffle=False)
        batches = [batch for _, batch in zip(range(args.batches), loader)]
        settings = LossSettings.from_hyp(load_hyp(checkpoint["hyp"]))
        for state, model in (("start", start_model(checkpoint, args.weights)), ("trained", trained)):
            rows.append(summarize(run.name, state, term_gradients(model, settings, batches, args.img)))
            logger.info("%s", rows[-1])
    write_csv(args.out.with_suffix(".csv"), rows)
    settings = {key: str(value) for key, value in vars(args).items()}
    write_json(args.out.with_suffix(".json"), {"header": header_lines(settings), "rows": rows})
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
