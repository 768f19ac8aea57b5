"""YOLO-format detection dataset and its DataLoader (the data contract of docs/ARCHITECTURE.md).

A batch is ``(images uint8 (B, 3, H, W) RGB, targets float32 (M, 6) [image_index, class, cx, cy, w, h]
normalised to the network image, paths, shapes)``; ``shapes[i] = ((h0, w0), ((ratio_h, ratio_w),
(pad_w, pad_h)))`` undoes the letterbox, or None for a mosaic. Finding and checking files lives in
``utils.data.scan``; the transforms in ``utils.data.augment``; this module applies them with the
:class:`AugmentSettings` it is given.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed

from utils.boxes import cxcywhn_to_xyxy, xyxy_to_cxcywhn
from utils.data.augment import AugmentSettings, augment_hsv, letterbox, mixup, mosaic4, random_affine, random_flip
from utils.data.scan import list_image_files, scan_dataset
from utils.data.tiles import TileSettings, paint_regions, plan_tiles
from utils.data.visdrone import ignored_regions
from utils.files import read_image

logger = logging.getLogger(__name__)

CACHE_MODES = (None, False, True, "ram")


def check_cache_mode(cache: Union[None, bool, str]) -> None:
    """Refuse a cache mode this loader does not have, in one plain sentence.

    ``disk`` is YOLOv5's ``.npy`` written beside every image, i.e. into the user's dataset folders; we never
    write there, so it is refused rather than silently taken as ``ram``.
    """
    if cache == "disk":
        raise ValueError("--cache disk is not supported: YOLOv5 writes a decoded .npy beside every image, and this "
                         "project never writes into your image folders; use --cache ram, or no --cache")
    if cache not in CACHE_MODES:
        raise ValueError(f"--cache {cache} is not a cache mode: use --cache ram (decoded images kept in memory), "
                         "or no --cache")


class LoadImagesAndLabels(Dataset):
    """Images + YOLO labels with letterbox (val, optionally rectangular batches) or mosaic/mixup/affine/HSV/flip
    augmentation (train). ``labels[i]`` (n, 5) ``[class, cx, cy, w, h]`` normalised, ``shapes`` (N, 2) ``[w, h]``.
    """

    def __init__(
        self, path: Union[str, Path, list], img_size: int = 640, batch_size: int = 16, augment: bool = False,
        augmentation: Optional[AugmentSettings] = None, rect: bool = False,
        cache: Union[None, bool, str] = None, single_cls: bool = False,
        stride: int = 32, pad: float = 0.0, image_weights: bool = False, seed: int = 0, prefix: str = "",
        nc: Optional[int] = None, workers: int = 8,
    ) -> None:
        check_cache_mode(cache)
        self.img_size, self.augment, self.stride = img_size, augment, stride
        self.augmentation = augmentation or AugmentSettings.from_hyp()
        self.rect = rect and not image_weights
        self.mosaic = augment and not self.rect
        self.image_weights = image_weights
        if augment and self.augmentation.copy_paste > 0:
            logger.warning("%scopy_paste=%s ignored: it needs segment labels, which this loader reads as boxes only",
                           prefix, self.augmentation.copy_paste)
        # single_cls merges every class into class 0 (YOLOv5 v7.0): no class id is out of range then.
        scan = scan_dataset(list_image_files(path, prefix), nc=None if single_cls else nc, workers=workers,
                            prefix=prefix)
        self.im_files, self.shapes = scan.im_files, scan.shapes
        self.labels = [labels.copy() for labels in scan.labels]
        if single_cls:
            for labels in self.labels:
                labels[:, 0] = 0
        self.indices = np.arange(len(self.im_files))
        self.batch_index = np.zeros(len(self.im_files), np.int64)
        if self.rect:
            self._sort_for_rect(batch_size, pad)
        self.rng = np.random.default_rng(seed)
        self.ims: list[Optional[np.ndarray]] = [None] * len(self.im_files)
        if cache in (True, "ram"):
            self._cache_images(workers, prefix)

    def __len__(self) -> int:
        return len(self.im_files)

    def _sort_for_rect(self, batch_size: int, pad: float) -> None:
        """Order images by aspect ratio and give each batch the smallest stride-multiple shape (h, w) that
        fits all its images at ``img_size`` (less padding, faster val)."""
        aspect = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = aspect.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes, aspect = self.shapes[order], aspect[order]
        self.batch_index = np.arange(len(order)) // batch_size
        num_batches = int(self.batch_index[-1]) + 1
        relative = np.ones((num_batches, 2))
        for batch in range(num_batches):
            batch_aspect = aspect[self.batch_index == batch]
            if batch_aspect.max() < 1:
                relative[batch] = (batch_aspect.max(), 1)
            elif batch_aspect.min() > 1:
                relative[batch] = (1, 1 / batch_aspect.min())
        self.batch_shapes = (np.ceil(relative * self.img_size / self.stride + pad) * self.stride).astype(int)

    def _cache_images(self, workers: int, prefix: str) -> None:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for index, (image, _, _) in enumerate(pool.map(self.load_image, range(len(self)))):
                self.ims[index] = image
        gigabytes = sum(image.nbytes for image in self.ims) / 1e9
        logger.info("%scached %d images in RAM (%.2f GB)", prefix, len(self.ims), gigabytes)

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``index`` as (h, w, 3) BGR with its long side resized to ``img_size`` -> (image, (h0, w0), (h, w))."""
        height0, width0 = int(self.shapes[index][1]), int(self.shapes[index][0])
        image = self.ims[index]
        if image is None:
            image = self.decode(index)
            gain = self.img_size / max(image.shape[:2])
            if gain != 1:
                interpolation = cv2.INTER_LINEAR if (self.augment or gain > 1) else cv2.INTER_AREA
                size = (max(1, round(image.shape[1] * gain)), max(1, round(image.shape[0] * gain)))
                image = cv2.resize(image, size, interpolation=interpolation)
        return image, (height0, width0), image.shape[:2]

    def decode(self, index: int) -> np.ndarray:
        """Image ``index`` as decoded, (h, w, 3) BGR, before the resize to ``img_size``."""
        # Training decodes large JPEGs at a reduced size; val keeps YOLOv5's full decode + INTER_AREA.
        height0, width0 = int(self.shapes[index][1]), int(self.shapes[index][0])
        image = read_image(self.im_files[index], max(height0, width0), self.img_size if self.augment else 0)
        if image is None:
            raise FileNotFoundError(f"image {self.im_files[index]} could not be read (changed since the scan?)")
        return image

    def _pixel_labels(self, index: int, width: float, height: float, pad: tuple[float, float] = (0, 0)) -> np.ndarray:
        """Labels of image ``index`` as (n, 5) ``[class, x1, y1, x2, y2]`` pixels of a (height, width) image."""
        labels = self.labels[index]
        boxes = cxcywhn_to_xyxy(labels[:, 1:5], width, height, pad[0], pad[1])
        return np.concatenate((labels[:, :1], boxes), 1).astype(np.float32)

    def _affine_args(self) -> dict[str, float]:
        aug = self.augmentation
        return {"degrees": aug.degrees, "translate": aug.translate, "scale": aug.scale, "shear": aug.shear,
                "perspective": aug.perspective, "min_px": aug.box_min_px, "min_area_frac": aug.box_min_area_frac,
                "max_aspect": aug.box_max_aspect}

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` and three random others in a mosaic, affine-warped and cropped to
        (img_size, img_size) -> (image BGR, labels (n, 5) ``[class, x1, y1, x2, y2]`` pixels)."""
        chosen = [index, *self.rng.integers(0, len(self), 3)]
        images, labels = [], []
        for i in chosen:
            image, _, (height, width) = self.load_image(int(i))
            images.append(image)
            labels.append(self._pixel_labels(int(i), width, height))
        canvas, canvas_labels = mosaic4(images, labels, self.img_size, self.rng, self.augmentation.box_min_area_frac)
        border = -(self.img_size // 2)
        return random_affine(canvas, canvas_labels, self.rng, border=(border, border), **self._affine_args())

    def load_letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Image ``index`` letterboxed to its (rect batch or square) shape -> (image BGR, pixel labels (n, 5),
        shapes entry ((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h))))."""
        image, (height0, width0), (height, width) = self.load_image(index)
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.img_size
        image, (ratio_w, ratio_h), pad = letterbox(image, shape, auto=False, scaleup=self.augment)
        labels = self._pixel_labels(index, ratio_w * width, ratio_h * height, pad)
        shapes = ((height0, width0), ((ratio_h * height / height0, ratio_w * width / width0), pad))
        return image, labels, shapes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Optional[tuple]]:
        """-> (image uint8 (3, H, W) RGB, targets (n, 6) ``[0, class, cx, cy, w, h]`` normalised, path, shapes)."""
        index = int(self.indices[index])
        aug, shapes = self.augmentation, None
        if self.mosaic and self.rng.random() < aug.mosaic:
            image, labels = self.load_mosaic(index)
            if self.rng.random() < aug.mixup:
                image, labels = mixup(image, labels, *self.load_mosaic(int(self.rng.integers(0, len(self)))), self.rng)
        else:
            image, labels, shapes = self.load_letterboxed(index)
            if self.augment:
                image, labels = random_affine(image, labels, self.rng, **self._affine_args())
        boxes_n = xyxy_to_cxcywhn(labels[:, 1:5], image.shape[1], image.shape[0])
        if self.augment:
            augment_hsv(image, aug.hsv_h, aug.hsv_s, aug.hsv_v, self.rng)
            image = random_flip(image, boxes_n, aug.fliplr, aug.flipud, self.rng)
        targets = np.zeros((len(labels), 6), np.float32)
        targets[:, 1], targets[:, 2:] = labels[:, 0], boxes_n
        chw = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))  # (3, H, W) RGB
        return torch.from_numpy(chw), torch.from_numpy(targets), self.im_files[index], shapes

    def sample_by_class_weights(self, class_weights: np.ndarray) -> None:
        """Draw this epoch's images with probability proportional to the summed weight of their classes
        (``image_weights``: rare classes are seen more often). class_weights: (nc,)."""
        image_weights = np.array([class_weights[labels[:, 0].astype(int)].sum() for labels in self.labels])
        image_weights = image_weights + 1e-6  # background images keep a small chance
        self.indices = self.rng.choice(len(self), len(self), p=image_weights / image_weights.sum())

    @staticmethod
    def collate_fn(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[str], tuple]:
        """Stack a batch and write each target's image index into column 0."""
        images, targets, paths, shapes = zip(*batch)
        for image_index, image_targets in enumerate(targets):
            image_targets[:, 0] = image_index
        return torch.stack(images, 0), torch.cat(targets, 0), list(paths), shapes

    @staticmethod
    def collate_quad(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[str], tuple]:
        """Tile each group of four images 2x2 into one image of twice the size (batch B -> B // 4):
        more context per image at the same per-pixel scale. Targets are re-normalised to the tile."""
        images, targets, paths, _ = LoadImagesAndLabels.collate_fn(batch)
        groups = len(images) // 4
        if groups == 0:
            raise ValueError(f"quad collate needs a batch of at least 4 images, got {len(images)}")
        height, width = images.shape[2:]
        tiled = images[:groups * 4].view(groups, 2, 2, 3, height, width)  # (G, row, col, 3, H, W)
        tiled = tiled.permute(0, 3, 1, 4, 2, 5).reshape(groups, 3, 2 * height, 2 * width)  # (G, 3, 2H, 2W)
        targets = targets[targets[:, 0] < groups * 4].clone()
        position = targets[:, 0].long() % 4
        targets[:, 2] = (targets[:, 2] + position % 2) / 2
        targets[:, 3] = (targets[:, 3] + position // 2) / 2
        targets[:, 4:] /= 2
        targets[:, 0] = torch.div(targets[:, 0], 4, rounding_mode="floor")
        return tiled.contiguous(), targets, paths[:groups * 4:4], (None,) * groups


class TiledImagesAndLabels(LoadImagesAndLabels):
    """The training dataset of ``--tile``: the frames are scanned as usual, then each item is one tile.

    ``im_files``/``shapes``/``labels`` describe the tiles (a tile's shape is its window in native pixels), so
    everything reading a dataset (mosaic, image weights, autoanchor, the C-BBL grid fit, the label plots)
    works on tiles; ``frame_files`` and ``plan`` (:class:`utils.data.tiles.TilePlan`) say where each tile comes
    from. A tile, like a frame, is resized to ``img_size`` (long side): --img equal to --tile keeps the native
    scale times --tile-scale. Frames with an official VisDrone annotation file beside them have their ignored
    regions respected (utils/data/tiles.py).
    """

    def __init__(self, path: Union[str, list], img_size: int, tile: TileSettings, cache: Any = None,
                 **kwargs: Any) -> None:
        if kwargs.get("rect"):
            raise ValueError("--tile trains on square tiles with mosaic: drop --rect")
        super().__init__(path, img_size, cache=None, **kwargs)
        plan = plan_tiles(self.shapes, self.labels, tile, self.augmentation.box_min_area_frac,
                          regions=[ignored_regions(frame) for frame in self.im_files])
        self.plan, self.frame_files = plan, self.im_files
        self.im_files = [self.frame_files[i] for i in plan.frames]
        self.shapes = np.stack([plan.windows[:, 2] - plan.windows[:, 0], plan.windows[:, 3] - plan.windows[:, 1]],
                               1).reshape(-1, 2)
        self.labels = plan.labels
        self.indices = np.arange(len(self.im_files))
        self.batch_index = np.zeros(len(self.im_files), np.int64)
        self.ims = [None] * len(self.im_files)
        prefix = kwargs.get("prefix", "")
        if len(self.im_files) == 0:
            raise ValueError(f"{prefix}--tile {tile.size}: no tiles (no frames with labels)")
        if cache in (True, "ram"):
            self._cache_images(kwargs.get("workers", 8), prefix)

    def decode(self, index: int) -> np.ndarray:
        """Tile ``index`` cut from its full-size frame (native resolution), (h, w, 3) BGR."""
        frame = int(self.plan.frames[index])
        image = read_image(self.frame_files[frame])
        if image is None:
            raise FileNotFoundError(f"image {self.frame_files[frame]} could not be read (changed since the scan?)")
        x1, y1, x2, y2 = (int(v) for v in self.plan.windows[index])
        regions = self.plan.regions[index]
        return paint_regions(image[y1:y2, x1:x2], regions) if len(regions) else image[y1:y2, x1:x2]


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream, derived from the loader's seed.

    The loader draws that seed from its generator each epoch (workers are not persistent), so the
    generator's state fixes every worker's stream: :func:`loader_rng_state` is all a resume needs.
    """
    info = torch.utils.data.get_worker_info()
    cv2.setNumThreads(0)  # workers already run in parallel: OpenCV's own threads would only oversubscribe
    info.dataset.rng = np.random.default_rng([torch.initial_seed() % 2**32, worker_id])


def loader_rng_state(loader: DataLoader) -> dict[str, Any]:
    """The random state of a training loader: its generator (shuffling, worker seeds) and the dataset's
    augmentation generator (used in this process with ``workers=0``), as checkpoint-safe data."""
    state = {"generator": loader.generator.get_state()}
    if isinstance(getattr(loader.dataset, "rng", None), np.random.Generator):
        state["dataset"] = json.dumps(loader.dataset.rng.bit_generator.state)  # JSON: its ints exceed 64 bits
    return state


def set_loader_rng_state(loader: DataLoader, state: dict[str, Any]) -> None:
    """Restore :func:`loader_rng_state`: the next epoch draws exactly what it would have drawn."""
    loader.generator.set_state(state["generator"])
    if "dataset" in state:
        loader.dataset.rng.bit_generator.state = json.loads(state["dataset"])


def create_dataloader(
    path: Union[str, Path, list], imgsz: int, batch_size: int, stride: int,
    augmentation: Optional[AugmentSettings] = None, augment: bool = False, rect: bool = False,
    cache: Union[None, bool, str] = None, workers: int = 0,
    shuffle: bool = False, single_cls: bool = False, pad: float = 0.0, rank: int = -1, image_weights: bool = False,
    quad: bool = False, seed: int = 0, prefix: str = "", nc: Optional[int] = None, tile: Optional[TileSettings] = None,
) -> tuple[DataLoader, LoadImagesAndLabels]:
    """The loader and its dataset; see the module docstring for the batch format.

    ``rank`` >= 0 shards the data with a DistributedSampler; ``nc`` (optional) drops labels with class >= nc,
    except under ``single_cls``, where every label is kept as class 0; ``tile`` makes the items tiles of the
    frames (:class:`TiledImagesAndLabels`).
    """
    if rect and shuffle:
        logger.warning("%srect=True is incompatible with shuffle; shuffle disabled", prefix)
        shuffle = False
    dataset_args = {"batch_size": batch_size, "augment": augment, "augmentation": augmentation, "rect": rect,
                    "cache": cache, "single_cls": single_cls, "stride": int(stride), "pad": pad,
                    "image_weights": image_weights, "seed": seed, "prefix": prefix, "nc": nc,
                    "workers": max(1, workers)}
    if tile is None:
        dataset = LoadImagesAndLabels(path, imgsz, **dataset_args)
    else:
        dataset = TiledImagesAndLabels(path, imgsz, tile, **dataset_args)
    batch_size = min(batch_size, len(dataset))
    num_workers = min(os.cpu_count() or 1, workers, batch_size)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator().manual_seed(seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                        num_workers=num_workers, pin_memory=torch.cuda.is_available(), generator=generator,
                        collate_fn=LoadImagesAndLabels.collate_quad if quad else LoadImagesAndLabels.collate_fn,
                        worker_init_fn=_seed_worker)  # workers restart each epoch: see _seed_worker
    return loader, dataset

