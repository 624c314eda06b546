"""A timeline of the pipeline's stages, per job, for the bench's service processes.

Not part of the service. With this folder on ``PYTHONPATH`` and
``BENCH_TRACE_DIR=DIR`` in the environment, every Python process that
imports the service's modules wraps the coroutine functions in `STAGES` and
appends one JSON line per call to ``DIR/<pid>.jsonl``: ``[pid, stage,
start, end]``, wall-clock seconds (``time.time()``, comparable across
processes). ``bench/tracing/timeline.py DIR`` summarises it per job. The bench
passes its environment (except ``FILEIMPORT_*``) on to ``fileimport serve``, so:

    BENCH_TRACE_DIR=/tmp/trace PYTHONPATH=$PWD/bench/tracing \\
        .venv/bin/python bench/run.py --cases b --backends sqlite

Each traced call costs a few microseconds and one ``write``; read the
shares and the order, and time the bench without it.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

STAGES: dict[str, list[tuple[str | None, str]]] = {
    "fileimport.imports.service": [(None, "create_job")],
    "fileimport.core.db": [("Database", "run_in_transaction"), ("Database", "run_read")],
    "fileimport.core.fetcher": [("OriginFetcher", "fetch")],
    "fileimport.imports.pipeline": [
        ("FileImporter", "_download"),
        ("FileImporter", "_inspect"),
        ("FileImporter", "_store"),
        ("FileImporter", "_save"),
    ],
    "fileimport.imports.recorder": [("ResultRecorder", "_write")],
    "fileimport.webhooks.tasks": [(None, "deliver_due_webhooks")],
}
"""Module -> (class or None, coroutine function) to time."""


def _install(folder: str) -> None:
    fd = os.open(os.path.join(folder, f"{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def timed(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return await fn(*args, **kwargs)
            finally:
                os.write(fd, (json.dumps([os.getpid(), stage, start, time.time()]) + "\n").encode())

        return wrapper

    def patch(module: ModuleType) -> None:
        for owner_name, name in STAGES[module.__name__]:
            owner = getattr(module, owner_name) if owner_name else module
            fn = getattr(owner, name)
            if inspect.iscoroutinefunction(fn):
                setattr(owner, name, timed(fn, f"{owner_name + '.' if owner_name else ''}{name}"))

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(
            self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
        ) -> ModuleSpec | None:
            if fullname not in STAGES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            execute = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                patch(module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Finder())


if os.environ.get("BENCH_TRACE_DIR"):
    _install(os.environ["BENCH_TRACE_DIR"])
