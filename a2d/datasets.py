"""The dataset registry (config/datasets.yaml plus an experiment's own `datasets:`) and fetching one
side of a dataset: from a local mirror when one is set, else from its official source.

`sha256` is of the *text* as every origin yields it after `normalise`: decompressed (or extracted from
its archive), without a UTF-8 BOM, with LF line ends and a final newline. So the official download, a
mirror copy normalised the same way and a user's own file all give the same bytes and one checksum.
`download_sha256`, where declared, pins the published file itself (before decompression)."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import http.client
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from a2d.files import InputError, atomic_path, check_text

REGISTRY_PATH = Path(__file__).resolve().parent.parent / "config" / "datasets.yaml"
MIRROR_ENV = "A2D_MIRROR"
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
DOWNLOAD_ATTEMPTS = 3
RETRY_DELAY_S = 2.0  # doubled after each failed attempt
TRANSIENT_HTTP = (408, 429)  # worth another try, as is any 5xx; any other HTTP error is final
CHUNK = 1 << 20


def registry(config: dict) -> dict:
    """Every dataset an experiment can name: the project registry, then the experiment's own."""
    with open(REGISTRY_PATH, encoding="utf-8") as f:
        entries = yaml.safe_load(f)
    return {**entries, **config.get("datasets", {})}


def mirror_dir(config: dict) -> str | None:
    """The mirror: $A2D_MIRROR wins over `data.mirror`, so a cluster can point at its own copy."""
    return os.environ.get(MIRROR_ENV) or config.get("data", {}).get("mirror")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise(raw: bytes) -> bytes:
    """The text of a file from any origin: gunzipped when it is gzip data, without a UTF-8 BOM, with
    LF line ends and a final newline (how a mirror stores it)."""
    if raw.startswith(GZIP_MAGIC):
        raw = gzip.decompress(raw)
    text = raw.removeprefix(BOM).replace(b"\r\n", b"\n")
    return text if not text or text.endswith(b"\n") else text + b"\n"


def _member(archive: Path, pattern: str, url: str) -> bytes:
    """The one archive member whose base name matches `pattern`."""
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as err:
        raise InputError(f"{url}: not a tar archive ({err}), but the registry names a member {pattern!r}") from None
    with tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        found = [m for m in files if fnmatch.fnmatch(Path(m.name).name, pattern)]
        if len(found) != 1:
            names = ", ".join(m.name for m in files)
            raise InputError(f"{url}: {len(found)} members match {pattern!r} (expected one); the archive has: {names}")
        return tar.extractfile(found[0]).read()


class _Truncated(OSError):
    """The connection closed before the announced length arrived."""


def _download_once(url: str, dest: Path) -> str:
    """Stream `url` into `dest` with progress on stderr; returns the sha256 of the bytes served."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:  # noqa: S310 (registry URLs)
        total = int(response.headers.get("Content-Length") or 0)
        done, shown = 0, time.monotonic()
        while chunk := response.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if time.monotonic() - shown > 5:
                of = f" of {total / 1e6:.1f} MB ({100 * done / total:.0f}%)" if total else " MB"
                print(f"{url}: {done / 1e6:.1f}{of}", file=sys.stderr, flush=True)
                shown = time.monotonic()
        if total and done != total:
            raise _Truncated(f"connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def download(url: str, dest: Path) -> str:
    """`_download_once`, retried with back-off on transient failures (network errors, truncated
    bodies, 5xx); a 404 and other client errors fail at once, as do local ones. Errors name the URL."""
    delay = RETRY_DELAY_S
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            return _download_once(url, dest)
        except urllib.error.HTTPError as err:
            problem = f"HTTP {err.code} {err.reason}"
            if err.code < 500 and err.code not in TRANSIENT_HTTP:
                raise InputError(f"{url}: {problem}") from None
        except urllib.error.URLError as err:  # no connection (DNS, refused, timeout), or a missing file:// path
            problem = str(err.reason)
            if isinstance(err.reason, FileNotFoundError):
                raise InputError(f"{url}: {problem}") from None
        except (http.client.HTTPException, ConnectionError, TimeoutError, _Truncated) as err:
            problem = str(err) or type(err).__name__
        if attempt < DOWNLOAD_ATTEMPTS:
            print(f"{url}: {problem}; trying again in {delay:g} s (attempt {attempt} of {DOWNLOAD_ATTEMPTS})",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
            delay *= 2
    raise InputError(f"{url}: download failed after {DOWNLOAD_ATTEMPTS} attempts: {problem}")


def _fetch_url(name: str, lang: str, side: dict, scratch: Path) -> bytes:
    """The published file (checked against `download_sha256` when declared), or its archive member."""
    url = side["url"]
    if "sha256" not in side:
        raise InputError(f"dataset {name} ({lang}): no sha256 declared for {url}; refusing an unchecked "
                         "download (add the sha256 of its normalised text to the registry)")
    served = download(url, scratch)
    if "download_sha256" in side and served != side["download_sha256"]:
        raise InputError(f"{url}: the file served has sha256 {served}, not the {side['download_sha256']} declared "
                         f"for dataset {name} ({lang})")
    return _member(scratch, side["member"], url) if "member" in side else scratch.read_bytes()


def _sacrebleu_file(spec: dict) -> bytes:
    from sacrebleu.utils import get_reference_files, get_source_file

    test_set, langpair = spec["test_set"], spec["langpair"]
    path = get_source_file(test_set, langpair) if spec["side"] == "src" else get_reference_files(test_set, langpair)[0]
    return Path(path).read_bytes()


def _origin(name: str, lang: str, side: dict, mirror: str | None) -> tuple[str, str]:
    """How and where this side is read: ("file", the user's path or the mirror's copy),
    ("sacrebleu", its test set) or ("url", the official download)."""
    if "path" in side:
        return "file", side["path"]
    if mirror and "mirror" in side and (Path(mirror) / side["mirror"]).is_file():
        return "file", str(Path(mirror) / side["mirror"])
    if "sacrebleu" in side:
        return "sacrebleu", f"sacrebleu -t {side['sacrebleu']['test_set']} -l {side['sacrebleu']['langpair']}"
    if "url" in side:
        return "url", side["url"]
    if mirror and "mirror" in side:
        raise InputError(f"dataset {name} ({lang}): {side['mirror']} is not in mirror {mirror}, "
                         "and the registry declares no download for it")
    where = f"mirror {mirror}" if mirror else f"no mirror (set data.mirror or ${MIRROR_ENV})"
    raise InputError(f"dataset {name} ({lang}): {side.get('mirror', '?')} not found in {where}, "
                     "and the registry declares no download for it")


def fetch_side(name: str, lang: str, side: dict, output: str, mirror: str | None) -> str:
    """Write one language side (`side`: its registry entry) of dataset `name` to `output`, normalised
    and checked; returns where it came from. Nothing is written unless every check passes."""
    kind, origin = _origin(name, lang, side, mirror)
    if kind == "url" and mirror and "mirror" in side:
        print(f"{side['mirror']} is not in mirror {mirror}: downloading {origin}", file=sys.stderr)
    with atomic_path(output) as tmp:
        if kind == "url":
            data = _fetch_url(name, lang, side, tmp)
        elif kind == "sacrebleu":
            data = _sacrebleu_file(side["sacrebleu"])
        else:
            data = Path(origin).read_bytes()
        data = normalise(data)
        if "sha256" not in side:
            print(f"WARNING: dataset {name} ({lang}) declares no sha256: {origin} is used unverified", file=sys.stderr)
        elif sha256(data) != side["sha256"]:
            raise InputError(f"{origin}: sha256 {sha256(data)} of the normalised text does not match the "
                             f"{side['sha256']} declared for dataset {name} ({lang})")
        check_text(data, f"{origin} (dataset {name}, {lang})")
        tmp.write_bytes(data)
    return origin
