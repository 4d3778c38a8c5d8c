"""Datasets: records, vocabulary, readers for each on-disk format, the synthetic demo set."""

from tagcap.data.records import Record, AnnotationDataset, carve_validation
from tagcap.data.vocab import Vocabulary
from tagcap.data.readers import read_dataset, detect_format, FORMATS

__all__ = ["Record", "AnnotationDataset", "carve_validation", "Vocabulary", "read_dataset",
           "detect_format", "FORMATS"]
