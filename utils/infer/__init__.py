"""Inference: backends, loading them (runtime), the predictor, detect options and results, sources, slicing, TTA,
WBF, export, outputs."""
