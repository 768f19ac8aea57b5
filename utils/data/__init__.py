"""Data: dataset configs, image/label scans and caches, dataset, augmentation, YOLO txt rows, synthetic, VisDrone."""
