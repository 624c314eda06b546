"""What a file is, from its bytes: MIME type (libmagic), pixel size (Pillow), duration (mutagen).

The type is never taken from a URL or a ``Content-Type`` header (SPEC: "The type
is sniffed from the bytes"). Everything here is synchronous and blocking (C
libraries and file reads): run `probe_file` in a worker thread
(``anyio.to_thread.run_sync``). `sniff_mime_type` on 64 KiB takes about
0.1 ms for binary formats and up to about 3 ms for plain text (libmagic's text
checks), so calling it on the event loop is tolerable but a thread is better
under load. Both are thread-safe.
"""

from __future__ import annotations

import functools
import io
import math
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import magic
import mutagen
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "OCTET_STREAM",
    "SNIFF_BYTES",
    "SVG_MIME_TYPE",
    "ContentProbe",
    "ProbeError",
    "probe_file",
    "sniff_mime_type",
]

SNIFF_BYTES = 64 * 1024
"""How many leading bytes to pass to `sniff_mime_type`.

With this many, libmagic agrees with ``file --mime-type`` on every file of the
sample corpus (JPEG, PNG, WebP, SVG, PDF, Ogg); 2 KiB already sufficed there.
"""

OCTET_STREAM = "application/octet-stream"
SVG_MIME_TYPE = "image/svg+xml"

# What libmagic calls an SVG it did not recognise (leading comment, BOM, ...).
_SVG_CANDIDATES = frozenset({"text/plain", "text/xml", "application/xml"})
_SVG_ALIASES = frozenset({"image/svg", "image/svg-xml", "image/x-svg"})

# Root element of an XML document after its prolog (declaration, comments,
# processing instructions, doctype), optionally with a namespace prefix.
_SVG_ROOT_RE = re.compile(
    r"""\A\s*
    (?:(?:<\?.*?\?>|<!--.*?-->|<!(?i:doctype)\s[^\[>]*(?:\[.*?\])?\s*>)\s*)*
    <(?:[A-Za-z_][\w.-]*:)?svg[\s/>]""",
    re.DOTALL | re.VERBOSE,
)

# libmagic's names for raster formats that Pillow reads under another MIME type.
_PILLOW_MIME_ALIASES = frozenset(
    {
        "image/vnd.microsoft.icon",
        "image/x-ms-bmp",
        "image/x-portable-bitmap",
        "image/x-portable-graymap",
        "image/x-portable-pixmap",
        "image/x-xbitmap",
        "image/x-xpixmap",
        "image/x-icns",
        "image/x-pcx",
        "image/vnd.zbrush.pcx",
        "image/x-tga",
        "image/x-targa",
    }
)

_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")

_magic_per_thread = threading.local()


class ProbeError(Exception):
    """The file's content cannot be accepted.

    Attributes:
        code: stable machine-readable word for the import result
            (``decompression_bomb``, ``corrupt_image``).
        reason: a sentence a person can act on.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ContentProbe:
    """What `probe_file` learnt about a file.

    Attributes:
        mime_type: the sniffed MIME type it was given.
        width, height: pixels, for raster images; None otherwise.
        duration: seconds, for audio and video where mutagen can read it; else None.
    """

    mime_type: str
    width: int | None
    height: int | None
    duration: float | None


def load_decoders() -> None:
    """Import every Pillow format plugin now (sync; about 35 ms, once per process).

    Otherwise ``Image.open`` imports them on the first file in a format it does
    not preload (WebP, TIFF, ...), and that file's probe, holding the GIL,
    stalls every download of the process for as long.
    """
    Image.init()


def _magic() -> magic.Magic:
    # One libmagic handle per thread: a handle is not safe to share, and
    # python-magic's own per-handle lock would serialise all worker threads.
    handle: magic.Magic | None = getattr(_magic_per_thread, "handle", None)
    if handle is None:
        handle = magic.Magic(mime=True)
        _magic_per_thread.handle = handle
    return handle


def _is_svg_document(head: bytes) -> bool:
    text = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    return _SVG_ROOT_RE.match(text) is not None


def sniff_mime_type(head: bytes) -> str:
    """The MIME type of a file from its first bytes, as ``file --mime-type`` says.

    ``head`` is the start of the file; pass `SNIFF_BYTES` (64 KiB) or the whole
    file if shorter. libmagic decides, with two corrections: its SVG spellings
    become ``image/svg+xml``, and a document libmagic calls ``text/plain`` or
    XML whose root element is ``<svg>`` (after a comment or a byte order mark,
    say) is ``image/svg+xml`` too. HTML that merely contains inline ``<svg>``
    stays ``text/html``. An empty head, or one libmagic cannot classify, gives
    ``application/octet-stream``. Like ``file``, libmagic may give arbitrary
    bytes a weak guess (``application/x-dosexec`` for about 1 in 100 random
    inputs). Never raises.
    """
    if not head:
        return OCTET_STREAM
    try:
        detected = str(_magic().from_buffer(head))
    except magic.MagicException:
        return OCTET_STREAM
    mime_type = detected.strip().lower() or OCTET_STREAM
    if mime_type in _SVG_ALIASES:
        return SVG_MIME_TYPE
    if mime_type in _SVG_CANDIDATES and _is_svg_document(head):
        return SVG_MIME_TYPE
    return mime_type


@functools.cache
def _pillow_mime_types() -> frozenset[str]:
    Image.init()
    return frozenset(Image.MIME.values()) | _PILLOW_MIME_ALIASES


def _bomb_error(mime_type: str, pixels: int | None, limit: int) -> ProbeError:
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return ProbeError(
        code="decompression_bomb",
        reason=(
            f"The {mime_type} image has {size}, over the limit of {limit:,} pixels "
            "that protects the service from decompression bombs."
        ),
    )


def _open(source: Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")


def _image_size(source: Path | bytes, mime_type: str) -> tuple[int, int] | None:
    limit = Image.MAX_IMAGE_PIXELS
    with _open(source) as fp:
        try:
            # Image.open reads the header only; pixels are never decoded here.
            with Image.open(fp) as image:
                width, height = image.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # The warning arrives as an exception only where warnings are errors.
            found = _BOMB_PIXELS_RE.search(str(exc))
            raise _bomb_error(mime_type, int(found.group(1)) if found else None, limit or 0) from exc
        except UnidentifiedImageError as exc:
            if mime_type not in _pillow_mime_types():
                return None  # a raster format Pillow does not read: size unknown
            raise ProbeError(
                code="corrupt_image",
                reason=f"The file looks like {mime_type}, but its image header cannot be read.",
            ) from exc
        except Exception as exc:  # Pillow's plugins raise many types on bad headers
            raise ProbeError(
                code="corrupt_image",
                reason=f"The {mime_type} image header is damaged: {exc}",
            ) from exc
    # Pillow only warns between 1x and 2x its limit; here that is an error too.
    if limit is not None and width * height > limit:
        raise _bomb_error(mime_type, width * height, limit)
    return width, height


def _duration(source: Path | bytes) -> float | None:
    with _open(source) as fp:
        try:
            media = mutagen.File(fp)
        except Exception:  # mutagen raises many types on unknown or damaged files
            return None
    length = getattr(getattr(media, "info", None), "length", None)
    if isinstance(length, int | float) and math.isfinite(length) and length > 0:
        return float(length)
    return None


def probe_file(source: Path | bytes, mime_type: str) -> ContentProbe:
    """Width and height of a raster image, or duration of audio and video.

    ``mime_type`` is the sniffed type (`sniff_mime_type`); it picks the reader:

    - ``image/*`` except SVG: pixel width and height from the header, via
      Pillow, never decoding pixels. Over ``PIL.Image.MAX_IMAGE_PIXELS``
      pixels (about 89.5 million by default) raises
      ``ProbeError("decompression_bomb")``; Pillow may also emit its
      ``DecompressionBombWarning`` through ``warnings`` for images between one
      and two times the limit. A format Pillow reads whose header it cannot
      parse raises ``ProbeError("corrupt_image")``; an image format Pillow
      does not read gives no size.
    - ``audio/*``, ``video/*``: duration in seconds via mutagen, None when the
      format is unknown to it or the file is damaged (never an error).
    - anything else: only the MIME type.

    ``source`` is the file's path or, for a small file, its whole content.
    Blocking (file I/O): run it in a worker thread for a path. On the bytes
    of a small file it only parses headers in memory (about 30 us for an
    icon), cheaper than a hop to a thread. Raises ``OSError`` when the file
    cannot be opened.
    """
    if mime_type.startswith("image/") and mime_type != SVG_MIME_TYPE:
        size = _image_size(source, mime_type)
        if size is None:
            return ContentProbe(mime_type, None, None, None)
        return ContentProbe(mime_type, size[0], size[1], None)
    if mime_type.startswith(("audio/", "video/")):
        return ContentProbe(mime_type, None, None, _duration(source))
    return ContentProbe(mime_type, None, None, None)
