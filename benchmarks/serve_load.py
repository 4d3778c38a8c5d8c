"""Load test of `tagcap serve`, and single-image `predict` latency, on this machine.

Service: starts `tagcap serve CKPT` on loopback, warms it up, then for --duration seconds keeps
--concurrency connections busy posting real test images to /v1/annotate. Reports requests/s,
latency percentiles, errors, and the server's resident memory sampled every second (start, end,
peak after warm-up), so a leak shows as growth.

Predict: loads the checkpoint once (`Annotator`), then times decode + backbone + decoder + rule
for one image at a time over --predict-images images (the latency a `predict` user sees per
image once the model is loaded).

    python benchmarks/serve_load.py --checkpoint CKPT --images ../shared/datasets/corel5k/images
writes benchmarks/results/serve_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from tagcap import atomic
from tagcap.provenance import machine_info


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(args: list[str], env: dict | None = None):
    """`tagcap serve ARGS` on a free loopback port; yields (url, process, seconds it took to answer
    /healthz), and stops it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "tagcap", "serve", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"serve exited: {proc.stderr.read()}")
                time.sleep(0.5)
        yield url, proc, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def hammer(url: str, payloads: list[tuple[str, bytes]], duration: float, concurrency: int, pid: int):
    import httpx

    latencies, errors, statuses = [], 0, {}
    memory = []
    stop_at = time.perf_counter() + duration

    async def worker(client, seed):
        nonlocal errors
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            name, data = rng.choice(payloads)
            t = time.perf_counter()
            try:
                r = await client.post(url + "/v1/annotate", files={"image": (name, data, "image/jpeg")})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
                statuses["exception"] = statuses.get("exception", 0) + 1
            latencies.append(time.perf_counter() - t)

    async def sampler():
        while time.perf_counter() < stop_at:
            memory.append(rss_mb(pid))
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(sampler(), *[worker(client, i) for i in range(concurrency)])
        wall = time.perf_counter() - t0
    return latencies, errors, statuses, memory, wall


def predict_latency(checkpoint: str, images: list[Path]) -> dict:
    from tagcap.features.images import load_image
    from tagcap.inference.taggers import Annotator

    annotator = Annotator(checkpoint)
    annotator.annotate([load_image(images[0])])  # warm-up
    times = []
    for path in images:
        t = time.perf_counter()
        annotator.annotate([load_image(path)])
        times.append((time.perf_counter() - t) * 1000)
    return {"images": len(times), "p50_ms": round(statistics.median(times), 1),
            "p90_ms": round(float(np.percentile(times, 90)), 1), "max_ms": round(max(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="annotation checkpoint (e.g. multi-order on Corel-5k)")
    ap.add_argument("--images", required=True, help="folder of test images to post")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--predict-images", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load"))
    args = ap.parse_args()

    files = sorted(Path(args.images).rglob("*.jp*g"))[:200]
    payloads = [(f.name, f.read_bytes()) for f in files]
    with serving([args.checkpoint]) as (url, proc, startup):
        asyncio.run(hammer(url, payloads, args.warmup, args.concurrency, proc.pid))  # warm-up, not counted
        lat, errors, statuses, memory, wall = asyncio.run(
            hammer(url, payloads, args.duration, args.concurrency, proc.pid))
        health = urllib.request.urlopen(url + "/healthz", timeout=5).read().decode()
    lat_ms = np.asarray(lat) * 1000
    service = {
        "requests": len(lat), "errors": errors, "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": round(wall, 1), "requests_per_second": round(len(lat) / wall, 2),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1), "p90_ms": round(float(np.percentile(lat_ms, 90)), 1),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 1), "max_ms": round(float(lat_ms.max()), 1),
        "rss_mb_start": round(memory[0], 1), "rss_mb_end": round(memory[-1], 1), "rss_mb_peak": round(max(memory), 1),
        "concurrency": args.concurrency, "startup_seconds": round(startup, 1), "healthz_after": health,
    }
    predict = predict_latency(args.checkpoint, files[: args.predict_images])
    result = {"service": service, "predict": predict, "checkpoint": os.path.basename(args.checkpoint.rstrip("/")),
              "machine": machine_info()}
    atomic.write_json(args.out + ".json", result)
    m = result["machine"]
    md = ["# Service load test and predict latency", "",
          f"Machine: {m['cpu']}, {m['cores']} cores; commit {m['commit']}; checkpoint `{result['checkpoint']}` "
          f"(default backbone, two views per image as in training).", "",
          f"`python benchmarks/serve_load.py --checkpoint ... --images ...` ({args.concurrency} connections, "
          f"{args.duration:g} s after {args.warmup:g} s of warm-up, {len(payloads)} distinct JPEGs posted at random).", "",
          "| requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | RSS MB start / end / peak |",
          "|---|---|---|---|---|---|---|---|",
          f"| {service['requests']} | {service['errors']} | {service['requests_per_second']} | {service['p50_ms']} | "
          f"{service['p90_ms']} | {service['p99_ms']} | {service['max_ms']} | {service['rss_mb_start']} / "
          f"{service['rss_mb_end']} / {service['rss_mb_peak']} |", "",
          f"Single-image predict, model loaded ({predict['images']} images, decode included): "
          f"p50 {predict['p50_ms']} ms, p90 {predict['p90_ms']} ms, max {predict['max_ms']} ms.", ""]
    atomic.write_text(args.out + ".md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
