"""Inference: everything that tags and captions images with trained models, and nothing that trains them.

- `checkpoint`: reading and checking checkpoint folders;
- `outputs`: decoder outputs from backbone features (views combined), captions decoded;
- `taggers`: `Annotator`, `Captioner`, `ModelSet` (several models, one backbone pass);
- `bundled`: the default models shipped in the package.

`predict`, `serve`, `report` and the Python API (`tagcap.api`) use this package. Nothing here may
import `tagcap.train`, the pipelines, the benches or Lightning (tests/test_api.py checks it in a
fresh interpreter), so tagging starts fast and needs no training dependencies.
"""
