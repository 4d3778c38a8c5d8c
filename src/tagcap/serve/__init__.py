"""The HTTP service: `tagcap serve CKPT [CKPT...]` (FastAPI) and its one web page."""

from tagcap.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
