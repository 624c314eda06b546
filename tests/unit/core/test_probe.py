"""MIME sniffing and content probing, checked against the sample corpus."""

from __future__ import annotations

import random
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fileimport.core.probe import (
    SNIFF_BYTES,
    ContentProbe,
    ProbeError,
    probe_file,
    sniff_mime_type,
)

Manifest = dict[str, dict[str, Any]]

ICON_SAMPLE_STEP = 20  # every 20th of the 1000 icons, in path order


def corpus_entries(manifest: Manifest, folder: str) -> list[dict[str, Any]]:
    entries = sorted(
        (entry for path, entry in manifest.items() if path.startswith(f"{folder}/")),
        key=lambda entry: str(entry["path"]),
    )
    if folder == "icons":
        entries = entries[::ICON_SAMPLE_STEP]
    assert entries, f"no corpus files in {folder}/"
    return entries


def head_of(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(SNIFF_BYTES)


def forged_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 1-bit pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# Sniffing: agreement with `file --mime-type` on the corpus


@pytest.mark.corpus
@pytest.mark.parametrize("folder", ["images", "documents", "audio", "icons"])
def test_sniff_agrees_with_file_command_on_first_64_kib(
    folder: str, corpus_dir: Path, corpus_manifest: Manifest
) -> None:
    mismatches = {
        entry["path"]: (sniffed, entry["mime_type"])
        for entry in corpus_entries(corpus_manifest, folder)
        if (sniffed := sniff_mime_type(head_of(corpus_dir / entry["path"]))) != entry["mime_type"]
    }

    assert mismatches == {}


@pytest.mark.corpus
def test_sniff_corpus_svgs_as_svg(corpus_dir: Path) -> None:
    svgs = sorted((corpus_dir / "images").glob("*.svg"))

    assert svgs
    assert {sniff_mime_type(head_of(path)) for path in svgs} == {"image/svg+xml"}


@pytest.mark.corpus
def test_sniff_is_thread_safe(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    entries = corpus_entries(corpus_manifest, "images") * 8
    heads = [head_of(corpus_dir / entry["path"]) for entry in entries]

    with ThreadPoolExecutor(max_workers=8) as pool:
        sniffed = list(pool.map(sniff_mime_type, heads))

    assert sniffed == [entry["mime_type"] for entry in entries]


@pytest.mark.parametrize(
    "head",
    [
        b"<!-- Generator: an editor -->\n<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg'></svg>",
        b"\n\n   <svg width='1' height='1'></svg>",
        b"<?xml version='1.0'?>\n<!DOCTYPE svg PUBLIC '-//W3C//DTD SVG 1.1//EN' "
        b"'http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd'>\n<svg/>",
        b"<svg:svg xmlns:svg='http://www.w3.org/2000/svg'/>",
    ],
)
def test_sniff_svg_variants(head: bytes) -> None:
    assert sniff_mime_type(head) == "image/svg+xml"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n",
            "text/html",
        ),
        (b"<html><body><svg width='10' height='10'></svg></body></html>", "text/html"),
        (b"see the <svg> element in the docs\n", "text/plain"),
        (b"<?xml version='1.0'?>\n<note>not an image</note>\n", "text/xml"),
        (b"", "application/octet-stream"),
        (random.Random(1234).randbytes(SNIFF_BYTES), "application/octet-stream"),
    ],
    ids=["html-error-page", "html-inline-svg", "text", "xml", "empty", "random-bytes"],
)
def test_sniff_non_images(head: bytes, expected: str) -> None:
    assert sniff_mime_type(head) == expected


# Probing: pixel size and duration


@pytest.mark.corpus
@pytest.mark.parametrize("folder", ["images", "icons"])
def test_probe_images_size_matches_manifest(folder: str, corpus_dir: Path, corpus_manifest: Manifest) -> None:
    for entry in corpus_entries(corpus_manifest, folder):
        probe = probe_file(corpus_dir / entry["path"], entry["mime_type"])

        assert probe == ContentProbe(
            mime_type=entry["mime_type"],
            width=entry.get("width"),
            height=entry.get("height"),
            duration=None,
        ), entry["path"]


@pytest.mark.corpus
def test_probe_audio_has_positive_duration(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    for entry in corpus_entries(corpus_manifest, "audio"):
        probe = probe_file(corpus_dir / entry["path"], entry["mime_type"])

        assert probe.duration is not None, entry["path"]
        assert 0 < probe.duration < 60, entry["path"]
        assert (probe.width, probe.height) == (None, None)


@pytest.mark.corpus
def test_probe_document_has_only_mime_type(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    for entry in corpus_entries(corpus_manifest, "documents"):
        probe = probe_file(corpus_dir / entry["path"], entry["mime_type"])

        assert probe == ContentProbe(entry["mime_type"], None, None, None)


def test_probe_decompression_bomb_over_twice_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(forged_png(20_000, 20_000))
    assert sniff_mime_type(path.read_bytes()) == "image/png"

    with pytest.raises(ProbeError) as caught:
        probe_file(path, "image/png")

    assert caught.value.code == "decompression_bomb"
    assert "400,000,000 pixels" in caught.value.reason


@pytest.mark.parametrize("warnings_are_errors", [True, False])
def test_probe_decompression_bomb_between_one_and_two_times_the_limit(
    tmp_path: Path, warnings_are_errors: bool
) -> None:
    # 100 million pixels: Pillow only warns (its limit is ~89.5 M, its error at 2x).
    path = tmp_path / "bomb.png"
    path.write_bytes(forged_png(10_000, 10_000))

    with warnings.catch_warnings():
        if warnings_are_errors:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        else:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ProbeError) as caught:
            probe_file(path, "image/png")

    assert caught.value.code == "decompression_bomb"
    assert "100,000,000 pixels" in caught.value.reason


def test_probe_image_at_the_limit_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(forged_png(9_000, 9_000))

    assert probe_file(path, "image/png") == ContentProbe("image/png", 9_000, 9_000, None)


def test_probe_damaged_image_header(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)

    with pytest.raises(ProbeError) as caught:
        probe_file(path, "image/png")

    assert caught.value.code == "corrupt_image"
    assert "image/png" in caught.value.reason


def test_probe_image_format_pillow_cannot_read_has_no_size(tmp_path: Path) -> None:
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100)

    assert probe_file(path, "image/heic") == ContentProbe("image/heic", None, None, None)


@pytest.mark.parametrize("mime_type", ["audio/mpeg", "video/mp4", "video/webm"])
def test_probe_unreadable_media_has_no_duration(tmp_path: Path, mime_type: str) -> None:
    path = tmp_path / "media"
    path.write_bytes(random.Random(7).randbytes(4096))

    assert probe_file(path, mime_type) == ContentProbe(mime_type, None, None, None)


def test_probe_svg_has_no_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "icon.svg"
    path.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>")

    assert probe_file(path, "image/svg+xml") == ContentProbe("image/svg+xml", None, None, None)


def test_probe_error_carries_code_and_reason() -> None:
    error = ProbeError(code="corrupt_image", reason="The header is damaged.")

    assert (error.code, error.reason) == ("corrupt_image", "The header is damaged.")
    assert str(error) == "corrupt_image: The header is damaged."
