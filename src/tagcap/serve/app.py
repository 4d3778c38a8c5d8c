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

import numpy as np
from fastapi import FastAPI, File, HTTPException, UploadFile  # module level: FastAPI reads these annotations
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from tagcap.errors import CheckpointError, DataError
from tagcap.features.images import preprocess
from tagcap.predict import Annotator, Captioner, checkpoint_task
from tagcap.serve.limits import DecodeGate, UploadLimit

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    max_upload_bytes: int = 20 * 1024 * 1024  # bigger bodies are refused while they stream in (limits.py)
    max_pixels: int = 40_000_000     # decompression bombs are refused before decoding
    heavy_pixels: int = 16_000_000   # larger non-JPEG images decode one at a time (limits.DecodeGate)
    timeout_s: float = 30.0          # a request waiting longer (decoding included) is answered 503
    body_timeout_s: float = 30.0     # an upload stalled longer between chunks is answered 408
    max_batch: int = 16              # images per backbone batch
    batch_window_ms: float = 5.0     # how long the first request of a batch waits for company
    engine: str = "auto"
    weights: str | None = None       # the backbone's weights file, where not the checkpoint's default


class Models:
    """The loaded checkpoints (at most one annotator and one captioner) behind one backbone pass."""

    def __init__(self, checkpoints: list[str | Path], engine: str = "auto", weights: str | None = None):
        if not checkpoints:
            raise CheckpointError("serve needs at least one checkpoint")
        self.annotator: Annotator | None = None
        self.captioner: Captioner | None = None
        self.paths = {}
        for ckpt in checkpoints:
            task = checkpoint_task(ckpt)
            if task == "caption":
                if self.captioner:
                    raise CheckpointError(f"{ckpt}: a second captioning checkpoint; serve takes one of each task")
                self.captioner = Captioner(ckpt, engine=engine, weights=weights)
            else:
                if self.annotator:
                    raise CheckpointError(f"{ckpt}: a second annotation checkpoint; serve takes one of each task")
                self.annotator = Annotator(ckpt, engine=engine, weights=weights)
            self.paths[task] = str(ckpt)
        first = self.annotator or self.captioner
        self.backbone = first.backbone
        if self.annotator and self.captioner:
            a, c = self.annotator.config["backbone"], self.captioner.config["backbone"]
            self.shared = a["weights"] == c["weights"] and a["input_size"] == c["input_size"]
            if self.shared:
                self.captioner.backbone = self.backbone  # one network in memory, one forward per batch
        else:
            self.shared = True

    def describe(self) -> dict:
        out = {}
        for name, model in (("annotation", self.annotator), ("caption", self.captioner)):
            if model is None:
                continue
            cfg = model.config
            out[name] = {
                "checkpoint": Path(self.paths[name]).name,
                "method": cfg["decoder"]["method"],
                "recipe": cfg.get("recipe", {}).get("name"),
                "backbone": {k: cfg["backbone"][k] for k in ("name", "weights", "input_size")},
                "vocabulary_size": model.decoder.num_labels,
                "decision": cfg.get("decision", {}).get("kind") if name == "annotation" else None,
                "metrics": cfg.get("metrics", {}),
                "trained_on": cfg.get("dataset", {}).get("name"),
                "versions": cfg.get("versions", {}),
            }
        return out

    def run(self, images: list, explain: bool = True, attention: bool = True) -> list[dict]:
        """Tags, trace, caption and attention for a batch of PIL images, the backbone run once."""
        bb = self.backbone
        batch = np.stack([preprocess(img, bb.input_size, bb.mean, bb.std) for img in images])
        pooled, grid = bb.views(batch)
        results = [{} for _ in images]
        if self.annotator:
            feats = pooled if self.annotator.decoder.feature_kind == "pooled" else grid
            for r, tags in zip(results, self.annotator.annotate_features(feats, explain=explain)):
                r.update(tags)
        if self.captioner:
            caps = (self.captioner.caption_features(grid, attention=attention) if self.shared
                    else self.captioner.caption(images, attention=attention))
            side = int(round(grid.shape[2] ** 0.5))
            for r, cap in zip(results, caps):
                r["caption"] = cap["caption"]
                if attention:
                    words = cap["caption"].split() + ["<end>"]
                    r["attention"] = {"grid": side, "words": [
                        {"word": w, "map": [round(float(x), 4) for x in m]} for w, m in zip(words, cap["attention"])]}
        return results


class Batcher:
    """Gathers concurrent requests into one batch for the backbone.

    A request waits at most `window` seconds for others; the batch then runs in a worker thread
    (the event loop stays free to accept uploads). One worker: on a CPU, two batches at once only
    fight over the same cores."""

    def __init__(self, models: Models, max_batch: int, window_s: float):
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

    async def submit(self, image) -> dict:
        if self.task is None:  # started lazily where the lifespan did not run (e.g. a bare TestClient)
            await self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
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
            items = [(img, fut) for img, fut in items if not fut.cancelled()]
            if not items:
                continue
            try:
                results = await loop.run_in_executor(self.pool, self.models.run, [img for img, _ in items])
                self.batches += 1
                self.images += len(items)
                for (_, fut), res in zip(items, results):
                    if not fut.done():
                        fut.set_result(res)
            except Exception as e:  # noqa: BLE001  -- a failed batch fails its requests, not the service
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)


def create_app(checkpoints: list[str | Path] | None = None, config: ServeConfig | None = None,
               models: Models | None = None):
    from contextlib import asynccontextmanager

    config = config or ServeConfig()
    models = models or Models(checkpoints or [], engine=config.engine, weights=config.weights)
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
    app.add_middleware(UploadLimit, max_upload_bytes=config.max_upload_bytes, body_timeout_s=config.body_timeout_s)
    gate = DecodeGate(config.max_pixels, config.heavy_pixels, reduce_to=2 * models.backbone.input_size)

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

    @app.post("/v1/annotate")
    async def annotate(image: UploadFile = File(..., description="the image file")):
        """Labels with scores, the per-step trace, and (with a captioner) the caption and its attention."""
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
            result = await asyncio.wait_for(batcher.submit(img), max(deadline - loop.time(), 0.001))
        except DataError as e:
            status = 413 if "pixel limit" in str(e) else 415
            raise HTTPException(status, str(e)) from None
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

    app.state.models, app.state.batcher = models, batcher
    return app


def _version() -> str:
    from tagcap import __version__

    return __version__
