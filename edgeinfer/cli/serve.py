"""`edgeinfer serve ARTIFACT [ARTIFACT ...]`: the photo service (HTTP API + web page)."""
from __future__ import annotations

import os
import sys


def add_parser(p) -> None:
    p.add_argument("artifacts", metavar="ARTIFACT", nargs="+", help="artifact directories (classifiers, CLIP)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--library", default=None,
                   help="library store file (SQLite; default ~/.local/share/edgeinfer/library.db)")
    p.add_argument("--library-root", action="append", default=[], metavar="DIR",
                   help="a folder clients may scan (repeat for several); scans outside every root "
                        "get 403")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on every route but /health "
                        "(default: $EDGEINFER_TOKEN)")
    p.add_argument("--provider", default="auto", help="auto | cpu | cuda | tensorrt | openvino")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | int8")
    p.add_argument("--threads", type=int, default=None, help="inference threads per model")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="request body limit (default 25; 413 above)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="inference requests admitted at once; more get 503 + Retry-After (default 64)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="wait this long to coalesce requests into one engine batch (default 0: only "
                        "requests already waiting are coalesced)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="images per coalesced engine batch (default: the runtime's batch size for the "
                        "engine: 1 on CPU engines, where coalescing measured no gain, 16 on GPUs)")
    p.add_argument("--lazy", action="store_true", help="load models on first use instead of at start")
    p.add_argument("--idle-unload-s", type=float, default=None,
                   help="unload a model after this many idle seconds (reloaded on the next request)")
    p.add_argument("--cors", action="store_true", help="allow cross-origin requests (any origin)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")


def run(args) -> int:
    import logging
    import socket

    from edgeinfer.errors import MissingDependencyError
    from edgeinfer.serve import ServeConfig, create_app

    try:
        import uvicorn
    except ImportError as e:
        raise MissingDependencyError("uvicorn", "serve", "`edgeinfer serve`") from e
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token or os.environ.get("EDGEINFER_TOKEN") or None
    cfg = ServeConfig(artifacts=list(args.artifacts), library=args.library, library_roots=args.library_root,
                      token=token, provider=args.provider, precision=args.precision, threads=args.threads,
                      max_upload_mb=args.max_upload_mb, max_queue=args.max_queue,
                      batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch, lazy=args.lazy,
                      idle_unload_s=args.idle_unload_s, cors=args.cors)
    app = create_app(cfg)
    st = app.state.edge
    # bind first so --port 0 can print the port it got
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets it sees as TCP; without
    # it every keep-alive response waited ~40 ms for the client's delayed ACK
    # (benchmarks/results/search.md)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        st.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}; pick another --port",
              file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"edgeinfer serve: http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    for m in st.models.values():
        where = f"{m.provider}/{m.precision}" if m.loaded else "not loaded yet (--lazy)"
        print(f"  model {m.name}: {m.kind}, {where}, weights {m.describe()['weights']}")
    print(f"  library: {st.store.path}" + (f" (scannable roots: {', '.join(map(str, st.roots))})"
                                           if st.roots else " (no --library-root: scans disabled)"))
    print(f"  auth: {'bearer token required' if token else 'none (no --token)'}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=30,
                            access_log=args.log_level == "debug")
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM: stop accepting, finish in-flight requests, then the app's
    # lifespan shutdown closes the scan (current batch committed), the models and the store.
    # Afterwards it re-raises the signal to the handler that was there before; make that one a
    # no-op so a clean shutdown exits 0 instead of dying by the signal.
    import signal

    got: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: got.append(signum))
    server.run(sockets=[sock])
    print(f"edgeinfer serve: stopped{' by signal ' + str(got[0]) if got else ''}; the library store is "
          f"closed and consistent", flush=True)
    return 0
