import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COREL = SHARED / "datasets" / "corel5k"


@pytest.fixture(scope="session", autouse=True)
def _cache_root(tmp_path_factory):
    """Every test writes caches (features, ONNX exports) under one session folder, never ~/.cache."""
    root = tmp_path_factory.mktemp("tagcap-cache")
    os.environ["TAGCAP_CACHE"] = str(root)
    yield root


needs_corel = pytest.mark.skipif(not COREL.is_dir(), reason=f"Corel-5k not found at {COREL} "
                                 "(the shared datasets folder sits beside the repository in CI)")


def write_png(path: Path, seed: int = 0, size=(32, 24)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def annotation_meta(num_labels: int) -> dict:
    """The smallest metadata an annotation checkpoint must carry to load (`checkpoint.check_config`)."""
    return {"task": "annotation", "vocabulary": {"labels": [f"label{i}" for i in range(num_labels)]},
            "decision": {"kind": "threshold", "t": 0.5},
            "backbone": {"spec": {"name": "tf_efficientnet_lite2"}, "weights": "test"}}
