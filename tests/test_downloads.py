"""Downloads for real: an HTTP server on loopback, fetched through the pipeline's own `fetch` rule with
no mirror configured. Plain, gzip and .tgz-member files; a wrong checksum, a 404, a connection dropped
mid-file and a transient 503."""

import gzip
import hashlib
import http.server
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from a2d.files import umask

ROOT = Path(__file__).resolve().parent.parent
DE = "Guten Tag .\r\nWie geht es ?\r\nDanke , gut .".encode()  # CRLF and no final newline, as WMT22 serves
EN = b"\xef\xbb\xbfGood day .\nHow are you ?\nFine , thanks .\n"  # with a BOM
TEXT = {"de": b"Guten Tag .\nWie geht es ?\nDanke , gut .\n", "en": b"Good day .\nHow are you ?\nFine , thanks .\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server(http.server.ThreadingHTTPServer):
    """Serves `files` (path -> bytes); paths in `drop` send half the body and close; paths in
    `flaky` answer 503 to their first request. `requests` counts requests per path."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.drop, self.flaky, self.requests = {}, set(), set(), {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests[self.path] = server.requests.get(self.path, 0) + 1
        if self.path in server.flaky and server.requests[self.path] == 1:
            self.send_error(503, "Service Unavailable")
            return
        if self.path not in server.files:
            self.send_error(404, "Not Found")
            return
        body = server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in server.drop else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def experiment(tmp_path: Path, datasets: dict) -> Path:
    """tests/configs/tiny_real.yaml with its data replaced by `datasets` (all splits from them)."""
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny_real.yaml").read_text())
    config["experiment"] = "web"
    config["datasets"] = datasets
    names = list(datasets)
    config["data"] = {"source": "de", "target": "en", "train": names, "valid": names[:1], "test": {"t": names[:1]}}
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fetch(tmp_path: Path, config: Path, targets: list[str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "A2D_MIRROR"}  # no mirror: the user's path
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2",
                           "--keep-going", *targets, "--directory", str(tmp_path), "--configfile", str(config)],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def raw(name: str, lang: str) -> str:
    return f"results/web/raw/{name}.{lang}"


def log(tmp_path: Path, name: str, lang: str) -> str:
    return (tmp_path / "logs" / "web" / "fetch" / f"{name}.{lang}.log").read_text()


@pytest.mark.e2e
def test_downloads_through_the_fetch_rule(tmp_path, server):
    server.files = {"/plain.de": DE, "/text.en.gz": gzip.compress(EN),
                    "/release.tgz": tgz({"release/corpus.de": DE, "release/corpus.en": EN})}
    server.flaky = {"/plain.de"}  # a transient 503 first: retried
    archive = sha(server.files["/release.tgz"])
    datasets = {
        "web/plain": {"de": {"url": server.url("/plain.de"), "sha256": sha(TEXT["de"]), "download_sha256": sha(DE)},
                      "en": {"url": server.url("/text.en.gz"), "sha256": sha(TEXT["en"])}},
        "web/archive": {side: {"url": server.url("/release.tgz"), "member": f"corpus.{side}", "sha256": sha(TEXT[side]),
                               "download_sha256": archive} for side in ("de", "en")},
    }
    config = experiment(tmp_path, datasets)
    targets = [raw(name, lang) for name in datasets for lang in ("de", "en")]
    result = fetch(tmp_path, config, targets)
    assert result.returncode == 0, result.stderr[-4000:]
    for name in datasets:
        for lang in ("de", "en"):
            output = tmp_path / raw(name, lang)
            # normalised (BOM, CRLF, final newline) to the bytes the declared sha256 is of
            assert output.read_bytes() == TEXT[lang], (name, lang)
            assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask()
    assert server.requests["/plain.de"] == 2 and "trying again in" in log(tmp_path, "web/plain", "de")


@pytest.mark.e2e
def test_failed_downloads_name_the_url_and_leave_nothing(tmp_path, server):
    tampered = DE + b"\nextra"
    server.files = {"/tampered.de": tampered, "/cut.de": DE * 200, "/ok.en": EN}
    server.drop = {"/cut.de"}
    ok = {"url": server.url("/ok.en"), "sha256": sha(TEXT["en"])}
    datasets = {
        "web/tampered": {"de": {"url": server.url("/tampered.de"), "sha256": sha(TEXT["de"])}, "en": ok},
        "web/served_other": {"de": {"url": server.url("/tampered.de"), "sha256": sha(TEXT["de"]),
                                    "download_sha256": sha(DE)}, "en": ok},
        "web/missing": {"de": {"url": server.url("/gone.de"), "sha256": sha(TEXT["de"])}, "en": ok},
        "web/cut": {"de": {"url": server.url("/cut.de"), "sha256": sha(TEXT["de"])}, "en": ok},
    }
    config = experiment(tmp_path, datasets)
    result = fetch(tmp_path, config, [raw(name, "de") for name in datasets])
    assert result.returncode != 0
    assert "does not match the" in log(tmp_path, "web/tampered", "de")
    assert f"{server.url('/tampered.de')}: the file served has sha256 {sha(tampered)}, not the {sha(DE)}" \
        in log(tmp_path, "web/served_other", "de")
    assert f"error: {server.url('/gone.de')}: HTTP 404 Not Found" in log(tmp_path, "web/missing", "de")
    assert server.requests["/gone.de"] == 1  # a 404 is final: no retries
    cut = log(tmp_path, "web/cut", "de")
    assert f"error: {server.url('/cut.de')}: download failed after 3 attempts: connection closed after" in cut
    assert server.requests["/cut.de"] == 3  # bounded retries
    raw_dir = tmp_path / "results" / "web" / "raw" / "web"
    assert not raw_dir.exists() or list(raw_dir.iterdir()) == []  # no output, no temporary file
