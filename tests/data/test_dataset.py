"""Tests for utils/data/dataset.py: the batch contract, exact boxes through the loader, rect, mosaic, caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_yolo_dataset
from utils.boxes import cxcywh_to_xyxy, scale_boxes_to_original
from utils.data.augment import AugmentSettings
from utils.data.dataset import LoadImagesAndLabels, create_dataloader
from utils.files import read_image
from utils.hyp import Hyp

NO_AUGMENT = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, translate=0, scale=0, mosaic=0)


@pytest.fixture
def images(tmp_path):
    return make_yolo_dataset(tmp_path / "data", num_images=6, size=(96, 128))


def drawn_extent(image: torch.Tensor, channel: int) -> np.ndarray:
    """xyxy extent of the pixels filled in one channel of a (3, H, W) RGB image."""
    array = image.numpy()
    others = [c for c in range(3) if c != channel]
    mask = (array[channel] >= 128) & (array[others] < 64).all(0)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def assert_targets_match_pixels(images_batch: torch.Tensor, targets: torch.Tensor, tolerance: float) -> None:
    height, width = images_batch.shape[2:]
    assert len(targets)
    for row in targets:
        box = cxcywh_to_xyxy(row[2:].numpy()) * [width, height, width, height]
        np.testing.assert_allclose(box, drawn_extent(images_batch[int(row[0])], int(row[1])), atol=tolerance)


def test_batch_contract_and_letterbox_undo(images):
    loader, dataset = create_dataloader(images, imgsz=160, batch_size=4, stride=32, nc=3)
    batch_images, targets, paths, shapes = next(iter(loader))
    assert batch_images.dtype == torch.uint8 and batch_images.shape == (4, 3, 160, 160)
    assert targets.dtype == torch.float32 and targets.shape[1] == 6
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3} and len(paths) == 4
    assert dataset.shapes.shape == (6, 2) and (dataset.shapes == [128, 96]).all()
    assert all(labels.shape[1] == 5 for labels in dataset.labels)
    assert_targets_match_pixels(batch_images, targets, tolerance=1.0)
    for index in range(4):  # the shapes entry maps the boxes back to the original label pixels
        rows = targets[targets[:, 0] == index]
        boxes = cxcywh_to_xyxy(rows[:, 2:]) * 160
        restored = scale_boxes_to_original(boxes, (160, 160), shapes[index][0], shapes[index][1])
        original = cxcywh_to_xyxy(torch.from_numpy(dataset.labels[index][:, 1:])) * torch.tensor([128, 96, 128, 96])
        torch.testing.assert_close(restored, original, atol=1e-3, rtol=0)


def test_rect_batches_are_small_stride_multiples(images):
    loader, dataset = create_dataloader(images, imgsz=128, batch_size=3, stride=32, rect=True, pad=0.5)
    for batch_images, targets, _, shapes in loader:
        height, width = batch_images.shape[2:]
        assert height % 32 == 0 and width % 32 == 0 and height < width  # 96x128 images -> landscape batches
        assert shapes[0][0] == (96, 128)
        assert_targets_match_pixels(batch_images, targets, tolerance=1.0)


def test_affine_augmented_loader_keeps_boxes_exact(images):
    hyp = NO_AUGMENT.replace(translate=0.1, scale=0.3)
    loader, _ = create_dataloader(images, imgsz=128, batch_size=6, stride=32,
                                  augmentation=AugmentSettings.from_hyp(hyp), augment=True, seed=1)
    loader.dataset.mosaic = False
    batch_images, targets, _, _ = next(iter(loader))
    inner = targets[((cxcywh_to_xyxy(targets[:, 2:]) > 0) & (cxcywh_to_xyxy(targets[:, 2:]) < 1)).all(1)]
    assert_targets_match_pixels(batch_images, inner, tolerance=1.5)


def test_mosaic_loader_is_deterministic_and_normalised(images):
    hyp = Hyp(mixup=0.5, degrees=5.0)
    batches = []
    for _ in range(2):
        loader, _ = create_dataloader(images, imgsz=96, batch_size=4, stride=32,
                                      augmentation=AugmentSettings.from_hyp(hyp), augment=True,
                                      shuffle=True, seed=3)
        batches.append(next(iter(loader)))
    (images1, targets1, _, shapes), (images2, targets2, _, _) = batches
    assert images1.shape == (4, 3, 96, 96) and shapes == (None,) * 4
    torch.testing.assert_close(images1, images2)
    torch.testing.assert_close(targets1, targets2)
    boxes = cxcywh_to_xyxy(targets1[:, 2:])
    assert len(boxes) and (boxes >= -1e-6).all() and (boxes <= 1 + 1e-6).all()


def test_workers_give_the_same_batches_run_to_run(images):
    runs = []
    for _ in range(2):
        loader, _ = create_dataloader(images, imgsz=64, batch_size=2, stride=32, augment=True, workers=2, seed=5)
        runs.append(torch.cat([targets for _, targets, _, _ in loader]))
    torch.testing.assert_close(runs[0], runs[1])


def test_ram_cache_gives_the_same_images(images):
    plain = LoadImagesAndLabels(images, img_size=128)
    cached = LoadImagesAndLabels(images, img_size=128, cache="ram")
    assert all(image is not None for image in cached.ims)
    for index in range(len(plain)):
        torch.testing.assert_close(plain[index][0], cached[index][0])
    with pytest.raises(ValueError, match="disk"):
        LoadImagesAndLabels(images, cache="disk")


def test_quad_collate_tiles_four_images(images):
    plain_images, plain_targets, _, _ = next(iter(create_dataloader(images, imgsz=64, batch_size=4, stride=32)[0]))
    loader, _ = create_dataloader(images, imgsz=64, batch_size=4, stride=32, quad=True)
    batch_images, targets, paths, _ = next(iter(loader))
    assert batch_images.shape == (1, 3, 128, 128) and len(paths) == 1 and (targets[:, 0] == 0).all()
    for position in range(4):
        row, col = divmod(position, 2)
        tile = batch_images[0, :, row * 64:(row + 1) * 64, col * 64:(col + 1) * 64]
        torch.testing.assert_close(tile, plain_images[position])
    expected = plain_targets.clone()
    expected[:, 2] = (expected[:, 2] + expected[:, 0] % 2) / 2
    expected[:, 3] = (expected[:, 3] + expected[:, 0] // 2) / 2
    expected[:, 4:] /= 2
    torch.testing.assert_close(targets[:, 1:], expected[:, 1:])


def test_single_cls_and_image_weights(images):
    dataset = LoadImagesAndLabels(images, img_size=64, single_cls=True, image_weights=True)
    assert all((labels[:, 0] == 0).all() for labels in dataset.labels)
    dataset = LoadImagesAndLabels(images, img_size=64)
    weights = np.array([0.0, 0.0, 1.0])  # only images holding class 2 should be drawn
    dataset.sample_by_class_weights(weights)
    has_class2 = {i for i, labels in enumerate(dataset.labels) if (labels[:, 0] == 2).any()}
    assert has_class2 and set(dataset.indices.tolist()) <= has_class2


def test_single_cls_keeps_every_class_as_class_0(images, caplog):
    """train.py passes nc=1 with --single-cls; labels of classes 1 and 2 must be merged, not dropped."""
    label_lines = [line for path in sorted((images.parent / "labels").glob("*.txt"))
                   for line in path.read_text().split("\n") if line]
    assert {line.split()[0] for line in label_lines} == {"0", "1", "2"}
    for augment, rect in ((True, False), (False, True)):  # the train and the val loader of train.py
        caplog.clear()
        loader, dataset = create_dataloader(images, 64, 4, 32, augmentation=AugmentSettings.from_hyp(NO_AUGMENT),
                                            augment=augment, rect=rect, single_cls=True, nc=1)
        assert "dropped" not in caplog.text
        assert sum(len(labels) for labels in dataset.labels) == len(label_lines)
        targets = torch.cat([batch[1] for batch in loader])
        assert len(targets) == len(label_lines) and (targets[:, 1] == 0).all()
    _, dataset = create_dataloader(images, 64, 4, 32, nc=1)  # without single_cls, nc=1 still drops classes >= 1
    assert sum(len(labels) for labels in dataset.labels) == sum(line.startswith("0 ") for line in label_lines)


def test_train_py_single_cls_loaders_see_every_instance(images, tmp_path, caplog):
    """The loaders train.py builds with --single-cls (nc=1): training and validation keep all classes as 0."""
    from utils.distributed import DistContext
    from utils.engine.options import parse_options
    from utils.engine.setup import build_loaders

    num_labels = sum(len(p.read_text().split()) // 5 for p in (images.parent / "labels").glob("*.txt"))
    (tmp_path / "three.yaml").write_text(f"path: {images.parent}\ntrain: images\nval: images\nnames: [a, b, c]\n")
    opts = parse_options(["--data", str(tmp_path / "three.yaml"), "--img", "64", "--single-cls", "--workers", "0"])
    data = {"train": str(images), "val": str(images), "nc": 3}
    _, dataset, val_loader = build_loaders(opts, data, 64, 32, DistContext(), batch_size=4)
    targets = torch.cat([batch[1] for batch in val_loader])
    assert "dropped" not in caplog.text and len(targets) == num_labels and (targets[:, 1] == 0).all()
    assert sum(len(labels) for labels in dataset.labels) == num_labels


@pytest.mark.parametrize("cache", ["disk", "yes"])
def test_unsupported_cache_mode_is_one_plain_sentence(images, cache):
    with pytest.raises(ValueError, match=f"--cache {cache} is not") as error:
        LoadImagesAndLabels(images, img_size=64, cache=cache)
    assert "(" not in str(error.value).split(":")[0] and "None" not in str(error.value)


def test_large_jpegs_decode_at_reduced_size_with_the_same_geometry(tmp_path):
    import cv2

    root = make_yolo_dataset(tmp_path / "data", num_images=2, size=(384, 512))
    for png in root.glob("*.png"):  # the same frames as JPEGs
        cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 100])
        png.unlink()
    path = str(sorted(root.glob("*.jpg"))[0])
    assert read_image(path, 512, 128).shape == (96, 128, 3)  # 1/4: the largest cut still >= 128
    assert read_image(path, 512, 200).shape == (192, 256, 3)  # 1/2
    assert read_image(path, 512, 0).shape == (384, 512, 3)  # full decode
    train = LoadImagesAndLabels(root, img_size=128, augment=True, augmentation=AugmentSettings.from_hyp(NO_AUGMENT))
    val = LoadImagesAndLabels(root, img_size=128, augment=False)
    for index in range(len(train)):
        reduced, original_shape, shape = train.load_image(index)
        full, _, full_shape = val.load_image(index)
        assert (original_shape, shape) == ((384, 512), full_shape)  # labels are normalised: boxes unchanged
        assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 4  # same picture, resampled differently
