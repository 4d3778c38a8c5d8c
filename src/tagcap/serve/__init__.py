"""The HTTP service: `tagcap serve CKPT [CKPT...]` (FastAPI) and its one web page.

Needs the `serve` extra (`pip install 'tagcap[serve]'`): FastAPI, uvicorn, python-multipart."""

from tagcap.errors import require_extra

for _module in ("fastapi", "uvicorn", "multipart"):
    require_extra(_module, "serve", "tagcap serve")

from tagcap.serve.app import ServeConfig, create_app  # noqa: E402

__all__ = ["ServeConfig", "create_app"]
