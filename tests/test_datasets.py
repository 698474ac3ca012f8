"""Fetching registry datasets: mirror or download, always checked against the declared sha256."""

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import yaml

from a2d.datasets import REGISTRY_PATH, fetch_side
from a2d.files import InputError

MIRROR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TEXT = "Guten Tag .\nWie geht es ?\n".encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_from_the_mirror_with_checksum(tmp_path):
    (tmp_path / "m" / "corpus").mkdir(parents=True)
    (tmp_path / "m" / "corpus" / "train.de").write_bytes(TEXT)
    entry = {"de": {"mirror": "corpus/train.de", "sha256": digest(TEXT), "url": "https://unreachable.invalid/x.gz"}}
    origin = fetch_side("toy/train", "de", entry["de"], str(tmp_path / "out.de"), str(tmp_path / "m"))
    assert origin == str(tmp_path / "m" / "corpus" / "train.de")  # the mirror wins over the download
    assert (tmp_path / "out.de").read_bytes() == TEXT


def test_checksum_mismatch_names_the_file_and_writes_nothing(tmp_path):
    (tmp_path / "train.de").write_bytes(TEXT + b"tampered\n")
    entry = {"de": {"mirror": "train.de", "sha256": digest(TEXT)}}
    with pytest.raises(InputError, match=r"train\.de: sha256 .* does not match .* toy/train \(de\)"):
        fetch_side("toy/train", "de", entry["de"], str(tmp_path / "out.de"), str(tmp_path))
    assert not (tmp_path / "out.de").exists()


def test_download_of_a_gzip_strips_the_bom(tmp_path):
    (tmp_path / "valid.de.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + TEXT))
    entry = {"de": {"url": (tmp_path / "valid.de.gz").as_uri(), "sha256": digest(TEXT)}}
    fetch_side("toy/valid", "de", entry["de"], str(tmp_path / "out.de"), mirror=None)
    assert (tmp_path / "out.de").read_bytes() == TEXT


def tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_download_of_an_archive_member(tmp_path):
    tgz(tmp_path / "devtest.tgz", {"devtest/dev.de": TEXT, "devtest/devtest.de": b"other\n"})
    entry = {"de": {"url": (tmp_path / "devtest.tgz").as_uri(), "member": "dev.de", "sha256": digest(TEXT)}}
    fetch_side("toy/dev", "de", entry["de"], str(tmp_path / "out.de"), mirror=None)
    assert (tmp_path / "out.de").read_bytes() == TEXT

    entry["de"]["member"] = "test.de"
    with pytest.raises(InputError, match=r"0 members match 'test.de'.*devtest/dev.de, devtest/devtest.de"):
        fetch_side("toy/dev", "de", entry["de"], str(tmp_path / "out2.de"), mirror=None)


def test_a_download_without_checksum_is_refused(tmp_path):
    (tmp_path / "x.de").write_bytes(TEXT)
    with pytest.raises(InputError, match="no sha256 declared"):
        fetch_side("toy/x", "de", {"url": (tmp_path / "x.de").as_uri()}, str(tmp_path / "o"), None)


def test_nowhere_to_get_it_from(tmp_path):
    entry = {"de": {"mirror": "iwslt/train.de"}}
    with pytest.raises(InputError, match=r"iwslt/train.de not found in no mirror .*declares no download"):
        fetch_side("iwslt/train", "de", entry["de"], str(tmp_path / "o"), None)
    with pytest.raises(InputError, match=r"iwslt/train.de is not in mirror .*declares no download"):
        fetch_side("iwslt/train", "de", entry["de"], str(tmp_path / "o"), str(tmp_path))


def test_a_mirror_or_own_file_may_be_gzipped(tmp_path):
    (tmp_path / "train.de.gz").write_bytes(gzip.compress(TEXT))
    fetch_side("toy/x", "de", {"path": str(tmp_path / "train.de.gz"), "sha256": digest(TEXT)}, str(tmp_path / "o"), None)
    assert (tmp_path / "o").read_bytes() == TEXT


def test_a_users_own_file(tmp_path):
    (tmp_path / "mine.xx").write_bytes(TEXT)
    fetch_side("mine", "xx", {"path": str(tmp_path / "mine.xx")}, str(tmp_path / "o"), None)
    assert (tmp_path / "o").read_bytes() == TEXT


@pytest.mark.skipif(not MIRROR.is_dir(), reason="needs the offline data mirror ../shared/data")
def test_every_mirrored_registry_entry_matches_its_checksum(tmp_path):
    registry = yaml.safe_load(REGISTRY_PATH.read_text())
    checked = 0
    for name, entry in registry.items():
        for lang, side in entry.items():
            if isinstance(side, dict) and "sha256" in side and (MIRROR / side.get("mirror", "-")).is_file():
                fetch_side(name, lang, side, str(tmp_path / "out"), str(MIRROR))
                checked += 1
    assert checked >= 30


def test_every_origin_is_normalised_to_the_checksummed_text(tmp_path):
    """What the official source serves (CRLF, no final newline, a BOM) and the mirror's normalised copy
    give the same bytes, so one sha256 covers both."""
    served = b"\xef\xbb\xbfGuten Tag .\r\nWie geht es ?"
    (tmp_path / "served.de.gz").write_bytes(gzip.compress(served))
    side = {"url": (tmp_path / "served.de.gz").as_uri(), "sha256": digest(TEXT),
            "download_sha256": digest(gzip.compress(served))}
    fetch_side("toy/x", "de", side, str(tmp_path / "a"), mirror=None)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.de").write_bytes(TEXT)
    fetch_side("toy/x", "de", {**side, "mirror": "x.de"}, str(tmp_path / "b"), str(tmp_path / "m"))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == TEXT


def test_control_characters_in_a_users_file_name_it_and_the_line(tmp_path):
    (tmp_path / "mine.de").write_bytes(b"ok\nnot\x00ok\n")
    where = rf"^{tmp_path}/mine.de \(dataset mine/train, de\):2"
    with pytest.raises(InputError, match=rf"{where}: control character U\+0000"):
        fetch_side("mine/train", "de", {"path": str(tmp_path / "mine.de")}, str(tmp_path / "o"), None)
    assert not (tmp_path / "o").exists()
