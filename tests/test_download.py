"""pipeline/download.py against local servers that answer like the Hugging Face Hub and its CDN.

`HEAD/GET /<repo>/resolve/<revision>/<file>` answers 302 to `/cdn/<repo>/<file>` on a second server (the
CDN, another origin as on the real Hub) with the Hub's headers (X-Repo-Commit, X-Linked-Etag = the LFS
SHA-256, X-Linked-Size, ETag); the CDN serves the bytes with Range support. The pinned hash table is
patched so that small payloads can stand in for the weights.
"""

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from pipeline import download as dl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "c0ffee" + "0" * 34
VAVAE_REPO, VAVAE_FILE = dl.FILES["vavae"]
STATS_REPO, STATS_FILE = dl.FILES["stats"]
DIT_REPO, DIT_FILE = dl.FILES["dit-64ep"]


class Hub(http.server.BaseHTTPRequestHandler):
    """The Hub's resolve endpoint plus its CDN. Class attributes are set per test by the fixture."""
    cdn = ""          # base URL of the CDN server
    files = {}        # (repo, file) -> bytes
    announce = {}     # (repo, file) -> SHA-256 to announce instead of the true one (a lying server)
    log = []          # (method, path, Authorization header or None)

    def log_message(self, *args):
        pass

    def _record(self):
        Hub.log.append((self.command, self.path, self.headers.get("Authorization")))

    def _resolve(self):
        repo_rev, _, filename = self.path.partition("/resolve/")
        revision, _, filename = filename.partition("/")
        body = self.files.get((repo_rev.strip("/"), filename))
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        sha = self.announce.get((repo_rev.strip("/"), filename)) or hashlib.sha256(body).hexdigest()
        self.send_response(302)
        # Another origin, as the Hub's CDN: huggingface_hub does not follow such a redirect on HEAD but
        # reads the X-Linked-* headers of the 302 itself.
        self.send_header("Location", f"{self.cdn}/cdn/{repo_rev.strip('/')}/{filename}")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')  # the LFS pointer's git oid on the Hub
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cdn(self, send_body):
        repo_file = self.path.split("?")[0].removeprefix("/cdn/")
        repo, _, filename = repo_file.rpartition("/")
        body = self.files[(repo, filename)]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if send_body:
            self.wfile.write(body[start:])

    def do_HEAD(self):
        self._record()
        self._cdn(False) if self.path.startswith("/cdn/") else self._resolve()

    def do_GET(self):
        self._record()
        self._cdn(True) if self.path.startswith("/cdn/") else self._resolve()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running fake Hub with HF_ENDPOINT pointing at it, a fresh cache under tmp_path, and three small
    files: two with a pinned hash (patched to theirs) and one without (the LightningDiT path)."""
    files = {(VAVAE_REPO, VAVAE_FILE): os.urandom(200_000), (STATS_REPO, STATS_FILE): b"stats" * 100,
             (DIT_REPO, DIT_FILE): os.urandom(50_000)}
    monkeypatch.setattr(Hub, "files", files)
    monkeypatch.setattr(Hub, "announce", {})
    monkeypatch.setattr(Hub, "log", [])
    monkeypatch.setattr(dl, "PINNED_SHA256", {VAVAE_FILE: hashlib.sha256(files[VAVAE_REPO, VAVAE_FILE]).hexdigest(),
                                              STATS_FILE: hashlib.sha256(files[STATS_REPO, STATS_FILE]).hexdigest()})
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url, cdn = (f"http://127.0.0.1:{server.server_address[1]}" for server in servers)
    monkeypatch.setattr(Hub, "cdn", cdn)
    import huggingface_hub.constants
    # huggingface_hub reads HF_HUB_CACHE when it is imported (already done in this process): patch the constant.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield url, files
    for server in servers:
        server.shutdown()
        server.server_close()


def error_line(capsys):
    """The `error: ...` line run_cli printed (huggingface_hub's progress bars share stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


def test_files_land_verified_and_token_is_sent(hub, tmp_path, monkeypatch):
    url, files = hub
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret")
    dest = tmp_path / "pretrained"
    dl.main(["--dest", str(dest), "--dit", "64ep"])
    for (repo, name), body in files.items():
        assert (dest / name).read_bytes() == body
    assert not [p for p in os.listdir(dest) if p.startswith(".")]   # no temp file left behind
    resolve = [(m, p, auth) for m, p, auth in Hub.log if "/resolve/" in p]
    cdn = [p for m, p, auth in Hub.log if m == "GET" and p.startswith("/cdn/")]
    assert {p.split("/resolve/")[0] for m, p, auth in resolve} == {"/" + VAVAE_REPO, "/" + DIT_REPO}
    assert all(auth == "Bearer hf_test_secret" for m, p, auth in resolve)
    assert len(cdn) == 3


def test_present_verified_file_is_kept_without_request(hub, tmp_path, capsys):
    url, files = hub
    dest = tmp_path / "pretrained"
    dest.mkdir()
    for repo, name in [(VAVAE_REPO, VAVAE_FILE), (STATS_REPO, STATS_FILE)]:
        (dest / name).write_bytes(files[repo, name])
    dl.main(["--dest", str(dest)])
    assert Hub.log == [] and capsys.readouterr().out.count("present, SHA-256 verified") == 2


def test_present_file_with_other_bytes_is_refused_and_left_alone(hub, tmp_path, capsys):
    """The script only ever places verified files: other bytes under the release's name are someone else's."""
    url, files = hub
    dest = tmp_path / "pretrained"
    dest.mkdir()
    (dest / STATS_FILE).write_bytes(b"truncated")
    with pytest.raises(SystemExit) as stop:
        dl.main(["--dest", str(dest), "--only", "stats"])
    assert stop.value.code == 2 and "move or delete it" in error_line(capsys)
    assert (dest / STATS_FILE).read_bytes() == b"truncated" and Hub.log == []


def test_wrong_pinned_hash_is_refused(hub, tmp_path, monkeypatch, capsys):
    url, files = hub
    monkeypatch.setitem(dl.PINNED_SHA256, STATS_FILE, "0" * 64)
    dest = tmp_path / "pretrained"
    with pytest.raises(SystemExit) as stop:
        dl.main(["--dest", str(dest), "--only", "stats"])
    line = error_line(capsys)
    got = hashlib.sha256(files[STATS_REPO, STATS_FILE]).hexdigest()
    assert stop.value.code == 2
    assert STATS_FILE in line and f"expected {'0' * 64}, got {got}" in line and "HF_ENDPOINT" in line
    assert not (dest / STATS_FILE).exists()
    # Nor is it kept in the cache, where the next run would find it instead of fetching it again.
    cached = [f for _, _, names in os.walk(tmp_path / "hf-cache") for f in names if f == got]
    assert cached == []


def test_unpinned_file_is_checked_against_the_announced_hash(hub, tmp_path, capsys):
    url, files = hub
    Hub.announce[DIT_REPO, DIT_FILE] = "1" * 64        # the server announces another file's hash
    with pytest.raises(SystemExit) as stop:
        dl.main(["--dest", str(tmp_path), "--only", "dit-64ep"])
    assert stop.value.code == 2 and "SHA-256 mismatch" in error_line(capsys)
    assert not (tmp_path / DIT_FILE).exists()


def test_network_failure_is_one_line(hub, tmp_path, monkeypatch, capsys):
    with socket.socket() as s:                          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    with pytest.raises(SystemExit) as stop:
        dl.main(["--dest", str(tmp_path), "--only", "vavae"])
    line = error_line(capsys)
    assert stop.value.code == 2 and closed in line and "internet" in line and "data set" in line
    assert not (tmp_path / VAVAE_FILE).exists()


def test_cli_process_honours_hf_endpoint_from_environment(hub, tmp_path):
    """A fresh process, where huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_CACHE at import."""
    url, files = hub
    env = dict(os.environ, HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_CACHE=str(tmp_path / "hf-home" / "hub"), HF_HUB_DISABLE_XET="1", PYTHONPATH=ROOT)
    pins = {STATS_FILE: hashlib.sha256(files[STATS_REPO, STATS_FILE]).hexdigest()}
    code = (f"import sys; from pipeline import download as dl; dl.PINNED_SHA256.update({pins!r}); "
            f"dl.main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, "--dest", str(tmp_path / "out"), "--only", "stats"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / STATS_FILE).read_bytes() == files[STATS_REPO, STATS_FILE]
    assert f"HF_ENDPOINT={url}" in r.stdout
    assert any(p.startswith(f"/{STATS_REPO}/resolve/") for m, p, auth in Hub.log)
    assert os.listdir(tmp_path / "hf-home" / "hub")     # huggingface_hub's cache, where HF_HUB_CACHE says
