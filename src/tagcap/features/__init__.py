"""Backbones (timm, offline weights), image preprocessing and the feature cache."""
