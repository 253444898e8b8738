"""Start a real ``edgeinfer serve`` for a benchmark and return its URL (imported by the scripts in
this folder, like ``_results.py``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time


def start_serve(serve_args: list[str], *, echo: bool = False,
                timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``python -m edgeinfer.cli.main serve SERVE_ARGS`` (give ``--port 0``) -> (process, base
    URL) once the server prints its address; its output is drained in a thread afterwards
    (printed while starting when ``echo``). Exits the benchmark when the server dies or does not
    start in ``timeout`` seconds."""
    cmd = [sys.executable, "-m", "edgeinfer.cli.main", "serve", *serve_args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"server exited: {p.wait()}")
        if echo:
            print("server:", line.rstrip(), flush=True)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, m.group(1)
    p.kill()
    raise SystemExit(f"server did not start in {timeout:.0f} s")
