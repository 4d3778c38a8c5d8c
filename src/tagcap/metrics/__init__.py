"""Metrics: annotation (per-label, per-image and overall P/R/F1, N+, mAP) and captioning (pycocoevalcap)."""

from tagcap.metrics.annotation import annotation_metrics, per_label_scores

__all__ = ["annotation_metrics", "per_label_scores"]
