"""FastAPI service: POST /v1/annotate, GET /v1/model, GET /healthz, the web page at /, docs at /docs.

Requests only ever carry image bytes: nothing names a file on the server. Concurrent requests
are gathered into one backbone batch (see `Batcher`), and every model loaded shares one backbone
forward pass when they were trained on the same backbone.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile  # module level: FastAPI reads these annotations
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from tagcap.errors import DataError, ImageTooLargeError
from tagcap.inference.taggers import ModelSet
from tagcap.serve.limits import DecodeGate, UploadLimit

STATIC = Path(__file__).parent / "static"
ICON_SIZES = (192, 512)  # the web app's icons, as phones ask for them


@dataclass
class ServeConfig:
    max_upload_bytes: int = 20 * 1024 * 1024  # bigger bodies are refused while they stream in (limits.py)
    max_pixels: int = 40_000_000     # decompression bombs are refused before decoding
    heavy_pixels: int = 16_000_000   # larger non-JPEG images decode one at a time (limits.DecodeGate)
    timeout_s: float = 30.0          # a request waiting longer (decoding included) is answered 503
    body_timeout_s: float = 30.0     # an upload not whole this long after its first read is answered 408
    max_uploads: int = 16            # uploads read at once; more are answered 503 (connections stay free)
    max_batch: int = 16              # images per backbone batch
    batch_window_ms: float = 5.0     # how long the first request of a batch waits for company
    engine: str = "auto"             # on a CPU, the shipped int8 backbone where it fits (features.quantize)
    device: str = "auto"             # where the models run (tagcap.devices)
    views: int = 2                   # 1: no mirrored view (half the backbone's work)
    rule: str = "shown"              # which tags: the shown rule, or each model's own (inference.taggers.RULES)
    weights: str | None = None       # the backbone's weights file, where not the checkpoint's default


def run_for_page(models: ModelSet, images: list, threshold: float | None = None, top_k: int | None = None,
                 beam_width: int | None = None) -> list[dict]:
    """Tags, trace, caption and attention for a batch of PIL images (the backbone run once), the
    attention as the web page draws it: a side and, per word, its map over the grid's cells."""
    results = models.run(images, explain=True, attention=models.captioner is not None, threshold=threshold,
                         top_k=top_k, beam_width=beam_width)
    if models.captioner is not None:
        side = int(round(models.captioner.backbone.grid_cells ** 0.5))
        for r in results:
            words = r["caption"].split() + ["<end>"]
            r["attention"] = {"grid": side, "words": [
                {"word": w, "map": [round(float(x), 4) for x in m]} for w, m in zip(words, r["attention"])]}
    return results


class Batcher:
    """Gathers concurrent requests into one batch for the backbone.

    A request waits at most `window` seconds for others; the batch then runs in a worker thread
    (the event loop stays free to accept uploads). One worker: on a CPU, two batches at once only
    fight over the same cores."""

    def __init__(self, models: ModelSet, max_batch: int, window_s: float):
        self.models, self.max_batch, self.window_s = models, max_batch, window_s
        self.queue: asyncio.Queue | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagcap-batch")
        self.task: asyncio.Task | None = None
        self.batches = self.images = 0

    async def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self):
        if self.task:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, image, **options) -> dict:
        """The results for one image; `options` (threshold, top_k) are the request's own decision rule."""
        if self.task is None:  # started lazily where the lifespan did not run (e.g. a bare TestClient)
            await self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, options, future))
        return await future

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(items) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list] = {}  # requests asking for the same rule run as one batch
            for img, options, fut in items:
                if not fut.cancelled():
                    groups.setdefault(tuple(sorted(options.items())), []).append((img, fut))
            for options, group in groups.items():
                await self._run(loop, group, dict(options))

    async def _run(self, loop, group: list, options: dict) -> None:
        try:
            results = await loop.run_in_executor(self.pool, lambda: run_for_page(
                self.models, [img for img, _ in group], **options))
            self.batches += 1
            self.images += len(group)
            for (_, fut), res in zip(group, results):
                if not fut.done():
                    fut.set_result(res)
        except Exception as e:  # noqa: BLE001  -- a failed batch fails its requests, not the service
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(e)


def create_app(checkpoints: list[str | Path] | None = None, config: ServeConfig | None = None,
               models: ModelSet | None = None, library: str | Path | None = None):
    """The service for checkpoint folders or bundled model names (none: the bundled defaults); with
    `library`, its gallery too (serve/gallery.py)."""
    from contextlib import asynccontextmanager

    from tagcap.inference.bundled import default_sources

    if library is not None:  # a missing or foreign library fails at start, before any model is loaded
        from tagcap.library.store import Library

        Library(library, mode="read").close()
    config = config or ServeConfig()
    models = models or ModelSet.load(list(checkpoints or []) or default_sources(), engine=config.engine,
                                     weights=config.weights, device=config.device, views=config.views,
                                     rule=config.rule)
    batcher = Batcher(models, config.max_batch, config.batch_window_ms / 1000)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()
        gate.shutdown()

    app = FastAPI(title="tagcap", version=_version(), lifespan=lifespan,
                  description="Tag and caption images with CNN-RNN models. POST an image to /v1/annotate.")
    app.add_middleware(UploadLimit, max_upload_bytes=config.max_upload_bytes, body_timeout_s=config.body_timeout_s,
                       max_uploads=config.max_uploads)
    gate = DecodeGate(config.max_pixels, config.heavy_pixels, reduce_to=models.decode_size)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1), "batches": batcher.batches,
                "images": batcher.images}

    @app.get("/v1/model")
    def model():
        return models.describe()

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/manifest.webmanifest", include_in_schema=False)
    def manifest():  # the pages install as an app on a phone; it reaches nothing but this server
        return JSONResponse({"name": "tagcap", "short_name": "tagcap", "start_url": "/", "display": "standalone",
                             "background_color": "#f6f7f9", "theme_color": "#1d2330",
                             "icons": [{"src": f"/icon-{px}.png", "sizes": f"{px}x{px}", "type": "image/png"}
                                       for px in ICON_SIZES]}, media_type="application/manifest+json")

    @app.get("/icon-{px}.png", include_in_schema=False)
    def icon(px: int):
        if px not in ICON_SIZES:
            raise HTTPException(404, "no such icon")
        return FileResponse(STATIC / f"icon-{px}.png", media_type="image/png")

    @app.post("/v1/annotate")
    async def annotate(image: UploadFile = File(..., description="the image file"),
                       threshold: float | None = Query(None, ge=0.0, le=1.0, description=(
                           "keep the labels scored at least this, instead of each model's own rule")),
                       top_k: int | None = Query(None, ge=1, le=1000, description=(
                           "keep each model's K best labels (with threshold: those of them at or above it)"))):
        """Labels with scores (each naming the model that gave it), the per-step trace, and (with a
        captioner) the caption and its attention."""
        # the body was counted against --max-upload-mb as it streamed in (limits.UploadLimit)
        data = await image.read()
        if not data:
            raise HTTPException(400, "empty upload")
        name = Path(image.filename or "upload").name  # for messages only: never opened as a path
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.timeout_s  # decoding and the model share one deadline
        try:
            # decoding decides what the bytes are; the file name and content type are ignored
            img = await asyncio.wait_for(gate.decode(data, name), config.timeout_s)
            result = await asyncio.wait_for(batcher.submit(img, threshold=threshold, top_k=top_k),
                                            max(deadline - loop.time(), 0.001))
        except DataError as e:  # too large to decode, or not an image at all
            raise HTTPException(413 if isinstance(e, ImageTooLargeError) else 415, str(e)) from None
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the request took longer than {config.timeout_s:g} s; try again") from None
        return {"image": name, "width": img.width, "height": img.height, **result}

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):  # what was wrong, never the upload's bytes echoed back
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                    for e in exc.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # the service keeps serving; the client learns what happened
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    if library is not None:
        from tagcap.serve.gallery import add_gallery

        add_gallery(app, library, STATIC)
    app.state.models, app.state.batcher = models, batcher
    return app


def _version() -> str:
    from tagcap import __version__

    return __version__
