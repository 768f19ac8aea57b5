"""The YOLO txt row ``class v1 v2 ...``: one writer for dataset label files and ``--save-txt`` predictions.

Label files (the VisDrone converter, the synthetic set) keep the 6 decimals of YOLOv5's dataset converters.
detect.py and val.py write predictions as YOLOv5 v7.0's detect.py and val.py do: the box normalised in float32,
every number printed with ``%g``, so the files read the same as YOLOv5's for the same boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utils.boxes import xyxy_to_cxcywhn

# Dataset label files: fixed 6 decimals, as YOLOv5's converters write them.
LABEL_FORMAT = ".6f"
# --save-txt rows: YOLOv5 v7.0's '%g' (6 significant digits).
PREDICTION_FORMAT = "g"


def yolo_txt(classes: np.ndarray, values: np.ndarray, number_format: str = PREDICTION_FORMAT) -> str:
    """Rows ``class v1 v2 ...`` (the class as an integer), one per line, each ending in a newline.

    Args:
        classes: (n,) class ids. values: (n, k) the columns after the class: ``cx cy w h`` normalised, then any
            extra column (confidence, C-BBL uncertainty), each printed with ``number_format``.
    Returns:
        The file's text ("" for no rows).
    """
    return "".join(f"{int(cls)} {' '.join(format(value, number_format) for value in row)}\n"
                   for cls, row in zip(classes, values))


def prediction_txt(boxes_xyxy: np.ndarray, classes: np.ndarray, image_hw: Sequence[int],
                   extra_columns: Sequence[np.ndarray] = ()) -> str:
    """``--save-txt`` rows ``class cx cy w h [extra..]`` of one image's detections.

    Args:
        boxes_xyxy: (n, 4) xyxy pixels of the original image (detect.py rounds them first, as YOLOv5's does).
        classes: (n,) class ids. image_hw: the original image's (height, width).
        extra_columns: (n,) arrays appended in order (confidence, then C-BBL uncertainty).
    Returns:
        The file's text: cxcywh normalised in float32 (YOLOv5's tensors), numbers as ``%g``.
    """
    height, width = image_hw
    boxes_n = xyxy_to_cxcywhn(np.asarray(boxes_xyxy, np.float32), np.float32(width), np.float32(height))  # (n, 4)
    columns = [boxes_n] + [np.asarray(column, np.float32)[:, None] for column in extra_columns]
    return yolo_txt(classes, np.concatenate(columns, 1))
