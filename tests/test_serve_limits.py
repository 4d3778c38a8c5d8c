"""`tagcap serve` as a real process against hostile clients: uploads far over the limit (with and without
a Content-Length), decompression bombs in parallel, clients that trickle their headers, more connections
than allowed; and what it writes and answers (no upload echoed back, files with the process umask)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hostile import good_jpeg
from conftest import serving
from test_serve import checkpoints  # noqa: F401  (the module's fixture: a RIA model and a captioner)

LIMIT_MB = 2
LIMIT = LIMIT_MB * 1024 * 1024


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("serve-limits")
    spool = root / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool)}  # where Starlette would spool uploads
    args = [*checkpoints, "--max-upload-mb", LIMIT_MB, "--header-timeout", 2, "--max-connections", 12, "--timeout", 60]
    with serving(args, root / "serve.log", env=env) as (url, port, pid):
        yield {"port": port, "url": url, "pid": pid, "spool": spool}


def multipart_head(boundary: bytes) -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            dict(ln.split(b": ", 1) for ln in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]).get(b"content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_an_oversized_content_length_is_refused_before_reading(server):
    with socket.create_connection(("127.0.0.1", server["port"])) as s:
        boundary = b"xyz"
        s.sendall(b"POST /v1/annotate HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                  b"Content-Length: %d\r\n\r\n" % (600 * 1024 * 1024) + multipart_head(boundary))
        s.settimeout(10)
        status, body = read_response(s)  # answered without the 600 MB ever being sent
    assert status == 413 and "nothing was read" in body["detail"]


def test_a_chunked_800mb_upload_is_cut_at_the_limit_with_nothing_over_it_on_disk(server):
    spool_max = 0
    sent = 0
    stop = threading.Event()

    def watch_spool():
        nonlocal spool_max
        while not stop.is_set():
            size = sum(f.stat().st_size for f in server["spool"].rglob("*") if f.is_file())
            spool_max = max(spool_max, size)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_spool)
    watcher.start()
    chunk = b"\xff" * 65536
    with socket.create_connection(("127.0.0.1", server["port"])) as s:
        s.sendall(b"POST /v1/annotate HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"%x\r\n%s\r\n" % (len(multipart_head(b"xyz")), multipart_head(b"xyz")))
        s.settimeout(0.5)
        try:
            while sent < 800 * 1024 * 1024:
                s.sendall(b"10000\r\n" + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the server stopped reading: what the test wants
        s.settimeout(10)
        status, body = read_response(s)
    stop.set()
    watcher.join()
    assert status == 413, body
    read = int(body["detail"].split("after ")[1].split(" bytes")[0].replace(",", ""))
    print(f"chunked upload cut after {read:,} bytes (limit {LIMIT:,})")
    assert LIMIT < read <= LIMIT + 64 * 1024, read  # the bar: at most the limit plus 64 kB read
    assert sent < 100 * 1024 * 1024  # the client was stopped long before it sent its 800 MB
    assert spool_max <= LIMIT  # nothing over the limit ever reached the disk
    assert rss_mb(server["pid"]) < 1500
    assert urllib.request.urlopen(server["url"] + "/healthz", timeout=5).status == 200


def bomb_png(side: int = 6300) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, "PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def post_image(url: str, data: bytes, timeout: float = 120) -> tuple[int, float]:
    boundary = "bound"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/annotate", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - t0


def test_decompression_bombs_in_parallel_stay_within_memory_and_photos_still_pass(server):
    bomb = bomb_png()
    assert len(bomb) < LIMIT
    results, normal = [], []
    threads = [threading.Thread(target=lambda: results.append(post_image(server["url"], bomb))) for _ in range(10)]
    for t in threads:
        t.start()
    photo = good_jpeg()
    while any(t.is_alive() for t in threads):
        normal.append(post_image(server["url"], photo))
    for t in threads:
        t.join()
    assert sorted({code for code, _ in results}) <= [200, 503] and len(results) == 10
    assert normal and all(code == 200 for code, _ in normal)
    assert rss_mb(server["pid"], "VmHWM") < 2500  # peak resident memory of the server process


def test_a_client_trickling_its_headers_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server["port"])) as s:
        s.sendall(b"POST /v1/annotate HTTP/1.1\r\nHost: t\r\n")
        t0 = time.monotonic()
        s.settimeout(1)
        closed = False
        while time.monotonic() - t0 < 10:
            try:
                s.sendall(b"X")  # one byte of a header at a time
                if s.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - t0 < 5  # --header-timeout 2


def test_connections_over_the_cap_get_503(server):
    held = []
    try:
        for _ in range(12):  # --max-connections 12, all held open (no request sent yet)
            held.append(socket.create_connection(("127.0.0.1", server["port"])))
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server["url"] + "/healthz", timeout=5)
        assert err.value.code == 503
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    assert urllib.request.urlopen(server["url"] + "/healthz", timeout=5).status == 200


def test_a_validation_error_does_not_echo_the_upload(checkpoints):  # noqa: F811
    from fastapi.testclient import TestClient

    from tagcap.serve import create_app

    with TestClient(create_app(list(checkpoints))) as client:
        r = client.post("/v1/annotate", data={"image": "SECRET-" + "x" * 5000})  # a text field, not a file
    assert r.status_code == 422
    assert "SECRET" not in r.text and len(r.text) < 1000


def test_written_files_get_the_process_umask(tmp_path):
    from tagcap import atomic

    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        atomic.write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_trickled_bodies_are_cut_and_healthz_answers_beside_sixty_of_them(checkpoints, tmp_path):  # noqa: F811
    """60 connections each send an upload's headers and then its body one byte a second: each body is
    cut when --body-timeout has passed in all (not reset by every byte), at most --max-uploads are read
    at once (the rest answered 503 and closed), and /healthz answers throughout."""
    args = [*checkpoints, "--body-timeout", 4, "--max-uploads", 8, "--max-connections", 100]
    with serving(args, tmp_path / "serve.log") as (url, port, _):
        socks = []
        try:
            for _ in range(60):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"POST /v1/annotate HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                          b"Content-Length: 100000\r\n\r\n" + multipart_head(b"b"))
                s.settimeout(0.05)
                socks.append(s)
            t0, answered, codes = time.monotonic(), [], {}
            while time.monotonic() - t0 < 12 and len(codes) < 60:
                for n, s in enumerate(socks):
                    if n in codes:
                        continue
                    try:
                        s.sendall(b"x")  # one more byte of the body
                        head = s.recv(4096)
                        if head:
                            codes[n] = int(head.split()[1])
                    except (socket.timeout, BlockingIOError):
                        pass
                    except OSError:
                        codes[n] = "closed"
                with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                    answered.append(r.status)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
            assert answered and set(answered) == {200}
            assert len(codes) == 60, f"{60 - len(codes)} trickling uploads were still open after 12 s"
            assert sum(c == 408 for c in codes.values()) == 8 and sum(c == 503 for c in codes.values()) == 52, codes
        finally:
            for s in socks:
                s.close()
