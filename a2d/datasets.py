"""The dataset registry (config/datasets.yaml plus an experiment's own `datasets:`) and fetching one
side of a dataset: from a local mirror when one is set, else from its official source, always
checked against the declared sha256 of the text."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

import yaml

from a2d.files import InputError, atomic_path

REGISTRY_PATH = Path(__file__).resolve().parent.parent / "config" / "datasets.yaml"
MIRROR_ENV = "A2D_MIRROR"
BOM = b"\xef\xbb\xbf"


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


GZIP_MAGIC = b"\x1f\x8b"


def _text(raw: bytes) -> bytes:
    """The text of a file from any origin: gunzipped when it is gzip data, without a UTF-8 BOM."""
    if raw.startswith(GZIP_MAGIC):
        raw = gzip.decompress(raw)
    return raw.removeprefix(BOM)


def _member(archive: bytes, pattern: str, url: str) -> bytes:
    """The one archive member whose base name matches `pattern`."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(archive))
    except tarfile.TarError as err:
        raise InputError(f"{url}: not a tar archive ({err}), but the registry names a member {pattern!r}") from None
    with tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        found = [m for m in files if fnmatch.fnmatch(Path(m.name).name, pattern)]
        if len(found) != 1:
            names = ", ".join(m.name for m in files)
            raise InputError(f"{url}: {len(found)} members match {pattern!r} (expected one); the archive has: {names}")
        return tar.extractfile(found[0]).read()


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (https/file URLs from the registry)
        return response.read()


def _sacrebleu_file(spec: dict) -> bytes:
    from sacrebleu.utils import get_reference_files, get_source_file

    test_set, langpair = spec["test_set"], spec["langpair"]
    path = get_source_file(test_set, langpair) if spec["side"] == "src" else get_reference_files(test_set, langpair)[0]
    return Path(path).read_bytes()


def fetch_side(name: str, lang: str, side: dict, output: str, mirror: str | None) -> str:
    """Write one language side (`side`: its registry entry) of dataset `name` to `output`; returns
    where it came from."""
    if "path" in side:  # a user's own file: used as is, checked when a checksum is given
        origin = side["path"]
        data = Path(origin).read_bytes()
    elif mirror and "mirror" in side and (Path(mirror) / side["mirror"]).is_file():
        origin = str(Path(mirror) / side["mirror"])
        data = Path(origin).read_bytes()
    elif mirror and "mirror" in side and not ("url" in side or "sacrebleu" in side):
        raise InputError(f"dataset {name} ({lang}): {side['mirror']} is not in mirror {mirror}, "
                         "and the registry declares no download for it")
    elif "sacrebleu" in side:
        origin = f"sacrebleu -t {side['sacrebleu']['test_set']} -l {side['sacrebleu']['langpair']}"
        data = _sacrebleu_file(side["sacrebleu"])
    elif "url" in side:
        if mirror and "mirror" in side:
            print(f"{side['mirror']} is not in mirror {mirror}: downloading {side['url']}", file=sys.stderr)
        if "sha256" not in side:
            raise InputError(f"dataset {name} ({lang}): no sha256 declared for {side['url']}; refusing an unchecked "
                             "download (add the sha256 of the decompressed text to the registry)")
        origin = side["url"]
        raw = _download(origin)
        data = _member(raw, side["member"], origin) if "member" in side else raw
    else:
        where = f"mirror {mirror}" if mirror else f"no mirror (set data.mirror or ${MIRROR_ENV})"
        raise InputError(f"dataset {name} ({lang}): {side.get('mirror', '?')} not found in {where}, "
                         "and the registry declares no download for it")
    data = _text(data)
    if "sha256" not in side:
        print(f"WARNING: dataset {name} ({lang}) declares no sha256: {origin} is used unverified", file=sys.stderr)
    elif sha256(data) != side["sha256"]:
        raise InputError(f"{origin}: sha256 {sha256(data)} does not match the {side['sha256']} declared "
                         f"for dataset {name} ({lang})")
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
    return origin
