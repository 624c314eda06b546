"""The origin: nginx from Debian's packages serving the corpus and a generated file on 127.0.0.1.

nginx runs in the foreground (``daemon off``) with every path it writes (pid,
error log, temp folders) inside a private folder, access logging off,
``sendfile`` and keep-alive on, so it costs as little as a static origin can.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
MIME_TYPES = "/etc/nginx/mime.types"


class Unavailable(Exception):
    """Something the bench needs is missing; the message says what and how to get it."""


@dataclass(frozen=True)
class Origin:
    """A running nginx: ``url(path)`` for a corpus file, ``generated_url(name)`` for a generated one."""

    base_url: str
    generated_dir: Path
    version: str
    workers: int
    pid: int

    def url(self, corpus_path: str) -> str:
        from urllib.parse import quote

        return f"{self.base_url}/corpus/{quote(corpus_path)}"

    def generated_url(self, name: str) -> str:
        return f"{self.base_url}/generated/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_nginx(*, install: bool) -> str:
    """The nginx binary; when missing and running as root, ``apt-get install -y nginx`` first.

    Raises Unavailable with what to do when there is still none.
    """
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("nginx is missing: installing Debian's package (apt-get install -y nginx) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "install", "-y", "-qq", "nginx"], ["apt-get", "update", "-qq"]):
            subprocess.run(command, env=env, capture_output=True, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx"],
            env=env,
            capture_output=True,
            check=False,
            timeout=600,
        )
        found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)
        if found:
            return found
    raise Unavailable("nginx is not installed (as root: apt-get update && apt-get install -y nginx)")


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ").removeprefix("nginx/")


def _config(prefix: Path, port: int, corpus: Path, generated: Path, workers: int) -> str:
    mime = f"include {MIME_TYPES};" if Path(MIME_TYPES).is_file() else ""
    temp = "\n".join(
        f"    {name}_temp_path {prefix / ('tmp-' + name)};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process on;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    {mime}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
{temp}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location /corpus/ {{ alias {corpus}/; }}
        location /generated/ {{ alias {generated}/; }}
    }}
}}
"""


@contextmanager
def nginx_origin(binary: str, corpus: Path, workdir: Path, *, workers: int) -> Iterator[Origin]:
    """Run nginx on a free loopback port until the block exits; the generated folder is emptied then."""
    prefix = workdir / "nginx"
    generated = workdir / "generated"
    for folder in (workdir, prefix, generated):
        folder.mkdir(parents=True, exist_ok=True)
        # nginx's workers run as an unprivileged user when started as root.
        folder.chmod(0o755)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_config(prefix, port, corpus.resolve(), generated, workers))
    test = subprocess.run(
        [binary, "-t", "-q", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    if test.returncode != 0:
        raise Unavailable(f"nginx rejected its configuration: {test.stderr.strip()}")
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                log = (prefix / "error.log").read_text(errors="replace")[-2000:]
                raise Unavailable(f"nginx exited with {process.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise Unavailable("nginx did not listen within 10 s") from None
                time.sleep(0.05)
        yield Origin(f"http://127.0.0.1:{port}", generated, nginx_version(binary), workers, process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(generated, ignore_errors=True)


def make_file(path: Path, size: int, *, seed: int = 20261130) -> None:
    """Write ``size`` bytes of seeded pseudo-random data (incompressible, the same every run)."""
    block = random.Random(seed).randbytes(16 * 1024 * 1024)
    with path.open("wb") as out:
        left = size
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
    path.chmod(0o644)
