"""Inference: backends, loading them, predictor, detect options/results, sources, slicing, TTA, WBF, export, outputs."""
