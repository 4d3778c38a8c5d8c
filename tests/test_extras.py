"""Optional parts: a missing extra says which `pip install` brings it; the package ships its licence,
citation and type marker; checkpoints record what made them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing any of `modules` fails, as if not installed."""
    prelude = textwrap.dedent(f"""
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ImportError(f"No module named {{name!r}}")
        sys.meta_path.insert(0, Missing())
    """)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, extra", [
    (["serve", "some-checkpoint"], "serve"),
    (["bench", "caption", "--data", "x", "--out", "y"], "caption"),
])
def test_a_missing_extra_names_the_install(argv, extra):
    missing = ["fastapi", "uvicorn", "multipart"] if extra == "serve" else ["pycocoevalcap"]
    done = run_without(missing, f"from tagcap.cli import main; raise SystemExit(main({argv!r}))")
    assert done.returncode == 2, done.stderr
    assert f"pip install 'tagcap[{extra}]'" in done.stderr and "Traceback" not in done.stderr


def test_tagging_needs_neither_extra():
    done = run_without(["fastapi", "uvicorn", "multipart", "pycocoevalcap"],
                       "import tagcap.predict, tagcap.pipeline, tagcap.bench, tagcap.captioning; print('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_licence_citation_and_type_marker_are_shipped():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert "cff-version" in (ROOT / "CITATION.cff").read_text()
    assert (ROOT / "src" / "tagcap" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"py.typed"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


def test_checkpoints_record_the_library_versions():
    from tagcap.provenance import versions

    v = versions()
    for package in ("tagcap", "torch", "timm", "lightning", "onnxruntime"):
        assert v[package], package
