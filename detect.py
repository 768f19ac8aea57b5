"""Detect objects in images, folders, videos, image sequences, webcams and streams.

    python detect.py --weights best.pt --source path/to/images_or_video
    python detect.py --weights best.pt --source big_frame.jpg --slice 640 640 --overlap 0.2 --slice-full-pass
    python detect.py --weights best.onnx --source 0          # webcam, through ONNX Runtime

Outputs go to runs/detect/<name>; ``utils.infer.predictor.run`` does the work and returns the arrays.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from utils.infer.predictor import ImageResult, run
from utils.log import setup_logging


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", default=["yolov5s.pt"], help=".pt (several = ensemble), .onnx, "
                        ".torchscript")
    parser.add_argument("--source", default="data/images", help="file, folder, glob, list .txt, video, "
                        "img_%%04d.png sequence, webcam index or stream URL")
    parser.add_argument("--data", default=None, help="dataset YAML whose class names replace the model's")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference h w")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--view-img", action="store_true", help="show results")
    parser.add_argument("--save-txt", action="store_true", help="save YOLO txt labels per image")
    parser.add_argument("--save-conf", action="store_true", help="append conf (and C-BBL uncertainty) to txt rows")
    parser.add_argument("--save-crop", action="store_true", help="save cropped boxes per class")
    parser.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    parser.add_argument("--classes", nargs="+", type=int, default=None, help="keep only these class ids")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--augment", action="store_true", help="test-time augmentation")
    parser.add_argument("--visualize", action="store_true", help="save feature maps (.pt weights only)")
    parser.add_argument("--project", default="runs/detect", help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")
    parser.add_argument("--line-thickness", type=int, default=None, help="box line width in pixels (default 1)")
    parser.add_argument("--hide-labels", action="store_true", help="draw boxes without labels")
    parser.add_argument("--hide-conf", action="store_true", help="labels without confidences")
    parser.add_argument("--half", action="store_true", help="FP16 inference (CUDA)")
    parser.add_argument("--vid-stride", type=int, default=1, help="use every n-th video frame")
    parser.add_argument("--slice", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="sliced inference with tiles of H x W frame pixels")
    parser.add_argument("--overlap", type=float, default=0.2, help="tile overlap ratio for --slice")
    parser.add_argument("--slice-full-pass", action="store_true", help="with --slice, also detect on the whole frame")
    parser.add_argument("--slice-batch", type=int, default=8, help="tiles per forward pass")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> list[ImageResult]:
    setup_logging()
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"detect.py: error: {err}")
