"""Metrics: annotation (design.md section 5) and, later, captioning."""

from tagcap.metrics.annotation import annotation_metrics, per_label_scores

__all__ = ["annotation_metrics", "per_label_scores"]
