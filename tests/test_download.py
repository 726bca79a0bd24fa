"""pretrained/download.py against a local HTTP server with Range support and HF-style hash headers."""

import hashlib
import http.server
import os
import threading

import pytest

from pipeline import download as dl
from pipeline.common import UsageError


class Handler(http.server.BaseHTTPRequestHandler):
    files = {}
    fail_after = None   # bytes to send before dropping the connection (simulated interruption)

    def log_message(self, *args):
        pass

    def _headers(self, body, status=200, start=0):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("X-Linked-Size", str(len(body)))
        self.send_header("X-Linked-Etag", '"' + hashlib.sha256(body).hexdigest() + '"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()

    def do_HEAD(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self._headers(body)

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self._headers(body, 206 if start else 200, start)
        payload = body[start:]
        if Handler.fail_after is not None:
            payload = payload[:Handler.fail_after]
            Handler.fail_after = None
        self.wfile.write(payload)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verify_resume_and_skip(tmp_path, server, capsys):
    body = os.urandom(300_000)
    Handler.files = {"/" + dl.FILES["stats"]: body, "/" + dl.FILES["vavae"]: b"tokenizer" * 1000}
    Handler.fail_after = 100_000
    with pytest.raises(SystemExit) as stop:
        dl.main(["--dest", str(tmp_path), "--base_url", server, "--only", "stats"])
    assert stop.value.code == 2 and "run the same command again" in capsys.readouterr().err
    part = tmp_path / "latents_stats.pt.part"
    assert part.is_file() and 0 < part.stat().st_size < len(body)
    dl.main(["--dest", str(tmp_path), "--base_url", server, "--only", "stats"])   # resumes with a Range request
    assert (tmp_path / "latents_stats.pt").read_bytes() == body and not part.exists()
    dl.main(["--dest", str(tmp_path), "--base_url", server])  # default set: stats already there, tokenizer fetched
    assert (tmp_path / "vavae-imagenet256-f16d32-dinov2.pt").read_bytes() == b"tokenizer" * 1000


def test_hash_mismatch_is_refused(tmp_path, server):
    Handler.files = {"/x": b"abc" * 10}
    with pytest.raises(UsageError, match="SHA-256 mismatch"):
        dl.download(server + "/x", str(tmp_path / "x"), expected_sha256="0" * 64)
    assert not (tmp_path / "x").exists()
