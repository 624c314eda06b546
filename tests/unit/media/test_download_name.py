"""The download name offered for an asset (``Content-Disposition``, the asset URL, ``asset.filename``)."""

from __future__ import annotations

import pytest

from fileimport.media.models import MediaEntry
from fileimport.media.service import MAX_FILENAME_BYTES, download_filename


def name_for(file_name: str, mime_type: str = "image/jpeg") -> str:
    return download_filename(MediaEntry(file_name=file_name, mime_type=mime_type))


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("cat", "cat.jpg"),
        ("Cat.JPG", "Cat.JPG"),  # its own extension, in its own case
        ("cat.jpeg", "cat.jpeg"),  # another extension of its type
        ("cat.png", "cat.png.jpg"),  # not its type's
        ("a/b\\c", "a_b_c.jpg"),
        ("Zürich, Hauptbahnhof", "Zürich, Hauptbahnhof.jpg"),
    ],
)
def test_a_short_name_gets_the_extension_of_its_type(file_name: str, expected: str) -> None:
    assert name_for(file_name) == expected


@pytest.mark.parametrize(
    ("file_name", "mime_type", "expected"),
    [
        ("setup.exe", "application/octet-stream", "setup.exe.bin"),
        ("invoice.bat", "text/plain", "invoice.bat.txt"),
        ("notes.txt", "text/plain", "notes.txt"),
        ("scan.TIFF", "image/tiff", "scan.TIFF"),
    ],
)
def test_an_executable_extension_is_never_what_a_download_ends_in(
    file_name: str, mime_type: str, expected: str
) -> None:
    """The host's mime.types lists .exe for bytes and .bat for text: not kept as the type's own."""
    assert name_for(file_name, mime_type) == expected


@pytest.mark.parametrize(
    ("character", "kept"),
    [
        ("é", (MAX_FILENAME_BYTES - 4) // 2),  # 2 bytes of UTF-8 each
        ("語", (MAX_FILENAME_BYTES - 4) // 3),
        ("😀", (MAX_FILENAME_BYTES - 4) // 4),
    ],
)
def test_a_long_non_ascii_name_is_cut_to_what_a_file_system_takes(character: str, kept: int) -> None:
    """A fileName of 255 characters (the most the POST takes) can be 1,020 bytes of UTF-8."""
    name = name_for(character * 255)
    assert len(name.encode()) <= MAX_FILENAME_BYTES
    assert name == character * kept + ".jpg"  # whole characters, the extension kept


def test_a_long_name_keeps_its_own_extension() -> None:
    name = name_for("é" * 251 + ".JPEG")
    assert name.endswith("é.JPEG")
    assert len(name.encode()) <= MAX_FILENAME_BYTES


def test_a_name_within_the_limit_is_not_cut() -> None:
    file_name = "a" * (MAX_FILENAME_BYTES - 4)
    assert name_for(file_name) == file_name + ".jpg"
