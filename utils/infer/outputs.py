"""Files a detect run writes under ``project/name``: annotated images and videos, YOLO txt labels, crops."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.annotate import crop_box, draw_detections
from utils.boxes import xyxy_to_cxcywhn
from utils.files import increment_path
from utils.infer.options import DetectOptions, ImageResult
from utils.infer.sources import Frame
from utils.log import log_once

logger = logging.getLogger(__name__)


class OutputWriter:
    """Files of one run under ``project/name``: annotated images and videos, YOLO txt labels, crops."""

    def __init__(self, opts: DetectOptions, names: Sequence[str], has_uncertainty: bool):
        self.opts, self.names, self.has_uncertainty = opts, list(names), has_uncertainty
        self.save_images = not opts.nosave
        self.save_dir = increment_path(Path(opts.project) / opts.name, exist_ok=opts.exist_ok)
        if self.save_images or opts.save_txt or opts.save_crop:
            (self.save_dir / "labels" if opts.save_txt else self.save_dir).mkdir(parents=True, exist_ok=True)
        self.video_writers: dict[str, cv2.VideoWriter] = {}

    def write(self, frame: Frame, result: ImageResult) -> None:
        """Save what the options ask for about one frame (and show it with --view-img)."""
        stem_frame = frame_stem(frame)
        if self.opts.save_txt:
            self.write_txt(self.save_dir / "labels" / f"{stem_frame}.txt", result)
        if self.opts.save_crop:
            for i, (box, class_id) in enumerate(zip(result.xyxy, result.cls)):
                crop_dir = self.save_dir / "crops" / self._name(class_id)
                crop_dir.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(crop_dir / f"{stem_frame}_{i}.jpg"), crop_box(frame.image, box))
        if not (self.save_images or self.opts.view_img):
            return
        annotated = draw_detections(frame.image, result.xyxy, result.cls, result.conf, self.names,
                                    self.opts.line_thickness, self.opts.hide_labels, self.opts.hide_conf)
        if self.opts.view_img:
            self._show(frame.path, annotated)
        if self.save_images and frame.is_video:
            self._video_writer(frame, annotated.shape).write(annotated)
        elif self.save_images:
            cv2.imwrite(str(self.save_dir / Path(frame.path).name), annotated)

    def write_txt(self, path: Path, result: ImageResult) -> None:
        """YOLO rows ``cls cx cy w h`` normalised, + ``conf`` (+ ``uncertainty`` for C-BBL) with --save-conf."""
        height, width = result.shape
        boxes = xyxy_to_cxcywhn(result.xyxy.astype(np.float64), width, height)
        with open(path, "w", encoding="utf-8") as f:
            for i, box in enumerate(boxes):
                values = [f"{v:.6g}" for v in box]
                if self.opts.save_conf:
                    values.append(f"{result.conf[i]:.6g}")
                    if self.has_uncertainty:
                        values.append(f"{result.uncertainty[i]:.6g}")
                f.write(" ".join([str(int(result.cls[i]))] + values) + "\n")

    def _name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else str(class_id)

    def _video_writer(self, frame: Frame, shape: Sequence[int]) -> cv2.VideoWriter:
        if frame.path not in self.video_writers:
            fps = frame.fps / self.opts.vid_stride if frame.fps else 30.0
            path = self.save_dir / f"{_safe_stem(frame.path)}.mp4"
            self.video_writers[frame.path] = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                             (int(shape[1]), int(shape[0])))
        return self.video_writers[frame.path]

    @staticmethod
    def _show(window: str, image: np.ndarray) -> None:
        try:
            cv2.imshow(window, image)
            cv2.waitKey(1)
        except cv2.error as err:
            log_once(logger, logging.WARNING, "--view-img: OpenCV cannot open a window here (%s)",
                     str(err).splitlines()[0] if str(err) else "no GUI")

    def close(self) -> None:
        """Finish video files and say where the results went."""
        for writer in self.video_writers.values():
            writer.release()
        if self.save_dir.exists():
            logger.info("Results saved to %s", self.save_dir)


def _safe_stem(path: str) -> str:
    """A file-name stem for a file, webcam index or stream URL."""
    stem = Path(path).stem if not path.isdigit() else f"webcam{path}"
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in stem) or "stream"


def frame_stem(frame: Frame) -> str:
    """``name`` for an image, ``name_<frame number>`` for a video frame, numbered from 1 as YOLOv5 numbers them
    (the frame's position in the video, so with --vid-stride 2 the labels are name_1, name_3, ...)."""
    return f"{_safe_stem(frame.path)}_{frame.index + 1}" if frame.is_video else _safe_stem(frame.path)
