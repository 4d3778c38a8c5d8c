"""Decompression bombs against `tagcap serve` and `tagcap predict`, with ordinary photos arriving all the while.

Starts `tagcap serve` (the bundled default models, or --checkpoint) on loopback, warms it up, takes its
idle memory, resets the kernel's peak counter (/proc/PID/clear_refs, root only; else the peak includes
the model loading), then sends --bombs PNGs of --side x --side pixels (a few hundred kB each, under the
upload limit and the pixel limit, so each must be decoded: about 119 MB of pixels apiece) all at once,
while one client keeps posting real photos one after another until the last bomb is answered. Reports
the bombs' status codes and times, the photos' latency percentiles, and the server's peak resident
memory against its idle memory (the bar: at most 1.5x). Then `tagcap predict` over a folder of
--bombs such PNGs and 8 photos: its peak memory against the same command on the 8 photos alone.

    python benchmarks/serve_bombs.py --images ../shared/datasets/corel5k/images
writes benchmarks/results/serve_bombs.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tagcap import atomic
from tagcap.provenance import machine_info

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import rss_mb, serving  # noqa: E402


def status_field(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, data: bytes, name: str) -> tuple[int, float]:
    boundary = "tagcapbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/annotate", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            return r.status, time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - t0


def predict_peaks(bomb: bytes, photos: list[bytes], bombs: int) -> dict:
    """Peak resident memory (MB) of `tagcap predict` over a folder of photos, then of the same folder
    with `bombs` bombs added; each run a child of its own, measured by the kernel (ru_maxrss)."""
    import tempfile

    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for n, data in enumerate(photos):
            (folder / f"photo{n}.jpg").write_bytes(data)
        for label, extra in (("photos", 0), ("photos_and_bombs", bombs)):
            for n in range(extra):
                (folder / f"bomb{n}.png").write_bytes(bomb)
            child = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', 'tagcap', 'predict', "
                     f"{str(folder)!r}, '--quiet'], stdout=subprocess.DEVNULL, check=True); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
            peaks[label] = round(int(out.split()[-1]) / 1024, 1)
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="a checkpoint to serve (default: the bundled models)")
    ap.add_argument("--images", required=True, help="a folder of ordinary photos to post meanwhile")
    ap.add_argument("--bombs", type=int, default=10)
    ap.add_argument("--side", type=int, default=6300)
    ap.add_argument("--out", default="benchmarks/results/serve_bombs")
    args = ap.parse_args()

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (args.side, args.side), (180, 40, 40)).save(buf, "PNG", compress_level=9)
    bomb = buf.getvalue()
    photos = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = [p.read_bytes() for p in random.Random(0).sample(photos, 50)]

    models = [args.checkpoint] if args.checkpoint else []
    with serving([*models, "--timeout", "120"]) as (url, proc, _):
        for data in photos[:5]:  # warm-up
            post(url, data, "warm.jpg")
        time.sleep(1)
        rss_start = rss_mb(proc.pid)
        try:  # from here on VmHWM is the peak of the bombs, not of the loading
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        memory, bombs, normal = [], [], []
        done = threading.Event()

        def sample():
            while not done.is_set():
                memory.append(rss_mb(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=lambda: bombs.append(post(url, bomb, "bomb.png")))
                   for _ in range(args.bombs)]
        for t in threads:
            t.start()
        k = 0
        while any(t.is_alive() for t in threads):
            normal.append(post(url, photos[k % len(photos)], "photo.jpg"))
            k += 1
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        peak = status_field(proc.pid, "VmHWM")

    lat = np.array([s for code, s in normal if code == 200])
    folder_peak = predict_peaks(bomb, photos[:8], args.bombs)
    result = {
        "bomb": {"side": args.side, "bytes": len(bomb), "decoded_mb": round(args.side ** 2 * 3 / 2**20, 1)},
        "bombs": args.bombs, "bomb_status": sorted(code for code, _ in bombs),
        "bomb_seconds": sorted(round(s, 2) for _, s in bombs),
        "photos": len(normal), "photo_errors": sum(code != 200 for code, _ in normal),
        "photo_latency_s": {"p50": round(float(np.percentile(lat, 50)), 3), "p95": round(float(np.percentile(lat, 95)), 3),
                            "p99": round(float(np.percentile(lat, 99)), 3), "max": round(float(lat.max()), 3)},
        "rss_mb": {"start": round(rss_start, 1), "peak_sampled": round(max(memory), 1), "vm_hwm": round(peak, 1),
                   "vm_hwm_reset_after_warmup": reset},
        "peak_over_idle": round(max(peak if reset else 0, max(memory)) / rss_start, 3),
        "predict_peak_mb": folder_peak,
        "wall_seconds": round(wall, 1), "machine": machine_info(),
        "command": "python benchmarks/serve_bombs.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    atomic.write_json(out.with_suffix(".json"), result)
    md = ["# Decompression bombs against `tagcap serve`", "",
          f"`{result['command']}`", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; commit {result['machine']['commit']}.", "",
          f"{args.bombs} PNGs of {args.side}x{args.side} ({len(bomb) / 1024:.0f} kB each, "
          f"{result['bomb']['decoded_mb']} MB of pixels each) posted at once, while one client posted Corel-5k "
          f"photos one after another until the last bomb was answered ({wall:.1f} s).", "",
          "| what | value |", "|---|---|",
          f"| bomb answers | {', '.join(map(str, result['bomb_status']))} |",
          f"| bomb times (s) | {', '.join(map(str, result['bomb_seconds']))} |",
          f"| photos answered meanwhile | {result['photos']} ({result['photo_errors']} errors) |",
          f"| photo latency p50 / p95 / p99 / max (s) | {result['photo_latency_s']['p50']} / "
          f"{result['photo_latency_s']['p95']} / {result['photo_latency_s']['p99']} / {result['photo_latency_s']['max']} |",
          f"| server memory idle (after warm-up) / peak with the bombs in flight, MB | {result['rss_mb']['start']} / "
          f"{max(result['rss_mb']['vm_hwm'] if reset else 0, result['rss_mb']['peak_sampled'])} "
          f"(**{result['peak_over_idle']}x**; bar 1.5x) |",
          f"| `tagcap predict` peak memory, MB: 8 photos / 8 photos and {args.bombs} bombs | "
          f"{folder_peak['photos']} / {folder_peak['photos_and_bombs']} |", ""]
    atomic.write_text(out.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
