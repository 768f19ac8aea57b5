"""Evaluation: val options, the validator, scoring, outputs, metrics, COCO and VisDrone protocols, metric plots."""
