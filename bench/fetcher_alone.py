"""The service's fetcher alone on case (b)'s URLs: what limits the import before any other stage.

Run by the bench as ``python bench/fetcher_alone.py SPOOL_DIR CONCURRENCY`` with
the URLs as a JSON list on stdin and the service's environment (its
``FILEIMPORT_*`` settings and, with ``--at``, the measured ``src`` on
PYTHONPATH). One process, on uvloop like ``fileimport worker``, downloads
every URL with ``OriginFetcher`` (address guard, spool file, SHA-256, the
same code as an import), CONCURRENCY at once, and deletes each spooled file;
no database, no probe, no store, no HTTP API. Prints ``{"seconds": S}``: from
the first request to the last body on disk, connections included (as curl's
time includes its own), the interpreter's start-up and imports not.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop

from fileimport.core.fetcher import FetchedFile, OriginFetcher
from fileimport.core.logging import configure_logging
from fileimport.core.settings import Settings

NO_LIMIT = 2**50  # bytes: the corpus's files are far below any project's limit


async def fetch_all(urls: list[str], spool_dir: Path, concurrency: int) -> float:
    """Seconds to download ``urls``, ``concurrency`` at once; raises the first ``FetchError``."""
    settings = Settings(worker_concurrency=concurrency, fetch_per_origin_concurrency=concurrency)
    slots = asyncio.Semaphore(concurrency)
    async with OriginFetcher(settings, spool_dir=spool_dir) as fetcher:

        async def one(url: str) -> None:
            async with slots:
                result = await fetcher.fetch(url, max_bytes=NO_LIMIT)
                if isinstance(result, FetchedFile) and result.path is not None:
                    result.path.unlink()

        started = time.perf_counter()
        await asyncio.gather(*(one(url) for url in urls))
        return time.perf_counter() - started


def main() -> None:
    spool_dir, concurrency = Path(sys.argv[1]), int(sys.argv[2])
    urls = json.load(sys.stdin)
    configure_logging("WARNING")
    seconds = uvloop.run(fetch_all(urls, spool_dir, concurrency))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
