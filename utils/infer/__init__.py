"""Inference: backends, the predictor, detect options and results, sources, slicing, TTA, WBF, export, outputs."""
