"""Files a detect run writes under ``project/name``: annotated images and videos, YOLO txt labels, crops."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.annotate import crop_box, draw_detections
from utils.data.yolo_txt import prediction_txt
from utils.files import (
    OutputNames,
    OutputWriteError,
    atomic_write_text,
    checked_imwrite,
    increment_path,
    make_dirs,
    outermost_missing,
    remove_created_folder,
)
from utils.infer.options import DetectOptions, ImageResult
from utils.infer.sources import Frame, is_stream
from utils.log import log_once

logger = logging.getLogger(__name__)


class OutputWriter:
    """Files of one run under ``project/name``: annotated images and videos, YOLO txt labels, crops."""

    def __init__(self, opts: DetectOptions, names: Sequence[str], has_uncertainty: bool,
                 source_files: Sequence[Path] = ()):
        self.opts, self.names, self.has_uncertainty = opts, list(names), has_uncertainty
        self.save_images = not opts.nosave
        self.save_dir = increment_path(Path(opts.project) / opts.name, exist_ok=opts.exist_ok)
        self.created_root = outermost_missing(self.save_dir)  # what a failed run removes again, if still empty
        if self.save_images or opts.save_txt or opts.save_crop:
            check_not_over_inputs(self.save_dir, source_files)
            make_dirs(self.save_dir / "labels" if opts.save_txt else self.save_dir)
        self.video_writers: dict[str, tuple[cv2.VideoWriter, Path]] = {}
        self.names_out = OutputNames()  # one output stem per source file (collisions get a stable suffix)

    def write(self, frame: Frame, result: ImageResult) -> None:
        """Save what the options ask for about one frame (and show it with --view-img)."""
        stem_frame = self.frame_stem(frame)
        if self.opts.save_txt:
            self.write_txt(self.save_dir / "labels" / f"{stem_frame}.txt", result)
        if self.opts.save_crop:
            for i, (box, class_id) in enumerate(zip(result.xyxy, result.cls)):
                crop_path = self.save_dir / "crops" / self._name(class_id) / f"{stem_frame}_{i}.jpg"
                checked_imwrite(crop_path, crop_box(frame.image, box))
        if not (self.save_images or self.opts.view_img):
            return
        annotated = draw_detections(frame.image, result.xyxy, result.cls, result.conf, self.names,
                                    self.opts.line_thickness, self.opts.hide_labels, self.opts.hide_conf)
        if self.opts.view_img:
            self._show(frame.path, annotated)
        if self.save_images and frame.is_video:
            self._video_writer(frame, annotated.shape).write(annotated)
        elif self.save_images:
            checked_imwrite(self.save_dir / self.names_out.name(frame.path), annotated)

    def frame_stem(self, frame: Frame) -> str:
        """The output stem of a frame: its source's unique stem, plus ``_<frame number>`` for a video frame,
        numbered from 1 as YOLOv5 numbers them (the frame's position in the video, so with --vid-stride 2 the
        labels are name_1, name_3, ...)."""
        stem = _safe_stem(frame.path) if is_stream(frame.path) else self.names_out.stem(frame.path)
        return f"{stem}_{frame.index + 1}" if frame.is_video else stem

    def write_txt(self, path: Path, result: ImageResult) -> None:
        """YOLO rows ``cls cx cy w h`` normalised, + ``conf`` (+ for C-BBL the expected IoU where the weights carry
        a calibration, else the uncertainty) with --save-conf.

        As YOLOv5 v7.0's detect.py writes them: the box rounded to whole pixels (half to even, torch.round's
        rule), then normalised in float32, printed with ``%g``.
        """
        localization = [result.localization] if self.has_uncertainty else []
        extra = [result.conf, *localization] if self.opts.save_conf else []
        boxes = np.round(result.xyxy.astype(np.float32))  # (n, 4)
        atomic_write_text(path, prediction_txt(boxes, result.cls, result.shape, extra))

    def _name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else str(class_id)

    def _video_writer(self, frame: Frame, shape: Sequence[int]) -> cv2.VideoWriter:
        if frame.path not in self.video_writers:
            fps = frame.fps / self.opts.vid_stride if frame.fps else 30.0
            stem = _safe_stem(frame.path) if is_stream(frame.path) else self.names_out.stem(frame.path)
            path = self.save_dir / f"{stem}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (int(shape[1]), int(shape[0])))
            if not writer.isOpened():
                raise OutputWriteError(path, "OpenCV cannot open an mp4v video writer there")
            self.video_writers[frame.path] = (writer, path)
        return self.video_writers[frame.path][0]

    @staticmethod
    def _show(window: str, image: np.ndarray) -> None:
        try:
            cv2.imshow(window, image)
            cv2.waitKey(1)
        except cv2.error as err:
            log_once(logger, logging.WARNING, "--view-img: OpenCV cannot open a window here (%s)",
                     str(err).splitlines()[0] if str(err) else "no GUI")

    def close(self, completed: bool = True) -> None:
        """Finish video files; after a complete run say where the results went, after a failed one remove
        the folders this run created (the run folder, and its project folder if that was new) if they hold no file."""
        for writer, path in self.video_writers.values():
            writer.release()
            if completed and not (path.is_file() and path.stat().st_size):  # VideoWriter reports no errors
                raise OutputWriteError(path, "the video file is missing or empty after writing")
        if not completed:
            remove_created_folder(self.created_root)
        elif self.save_dir.exists():
            logger.info("Results saved to %s", self.save_dir)


def check_not_over_inputs(save_dir: Path, source_files: Sequence[Path]) -> None:
    """Refuse an output folder that is a source folder or holds one (``--project . --name photos --exist-ok`` on
    ``--source photos``): annotated images and labels would be written over the inputs."""
    out = save_dir.resolve()
    for folder in sorted({Path(path).resolve().parent for path in source_files}):
        if folder == out or out in folder.parents:
            raise ValueError(f"the output folder {save_dir} holds the source images ({folder}); results would be "
                             "written over them: choose another --project/--name")


def _safe_stem(path: str) -> str:
    """A file-name stem for a webcam index or stream URL (files keep their own names)."""
    stem = Path(path).stem if not path.isdigit() else f"webcam{path}"
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in stem) or "stream"


