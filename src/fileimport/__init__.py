"""fileimport: asynchronous file import service with a media library.

Compatible with the Livingdocs Public API "Import Files" endpoints
(``POST /api/v1/import/files``, ``GET /api/v1/import/files/status``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fileimport")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

USER_AGENT = f"fileimport/{__version__} (+https://github.com/fileimport/fileimport)"
