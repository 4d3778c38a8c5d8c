import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# The suite runs in pytest-xdist workers (pyproject's addopts). Each worker, and the tagcap processes
# its tests start, gets its share of the cores, where torch and onnxruntime would each take them all
# (on 2 cores, 2 workers of 1 thread ran the suite in 13 min; one process of 2 threads, 18).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, at most 4 (each holds torch and the models; the slowest test file,
    the quality guard, takes 4-5 minutes whatever the count)."""
    return max(1, min(4, os.cpu_count() or 1))


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list, log_path: Path, env: dict | None = None):
    """`tagcap serve ARGS` in its own process, as a user starts it; yields (url, port, pid) once /healthz
    answers, and stops it after."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tagcap", "serve", *map(str, args), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(Path(log_path).read_text())
                time.sleep(0.5)
        yield url, port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt install "
                                                              "chromium; .ci/run installs it)")


@contextmanager
def offline_page(url: str, viewport: dict | None = None):
    """A headless Chromium page (1100x800, or `viewport`) that may reach `url` and nothing else; yields
    (page, the other URLs it tried, which the test should find empty)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    elsewhere: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=viewport or {"width": 1100, "height": 800})

        def route(r):
            if r.request.url.startswith(url):
                r.continue_()
            else:
                elsewhere.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        try:
            yield page, elsewhere
        finally:
            browser.close()
