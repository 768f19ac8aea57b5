"""Data: dataset configs, image/label scans and caches, the dataset, augmentation, synthetic data, VisDrone."""
