"""Service options (one dataclass; the CLI fills it, tests build it directly)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..library.store import default_library_path


@dataclass
class ServeConfig:
    artifacts: list[str] = field(default_factory=list)
    library: str | os.PathLike | None = None          # None: default_library_path()
    library_roots: list[str] = field(default_factory=list)
    token: str | None = None
    provider: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_upload_mb: float = 25.0
    # admitted inference requests (running + waiting); above it: 503 + Retry-After
    max_queue: int = 64
    # coalescing: wait up to this long for more requests to the same model. 0: only requests
    # already waiting are coalesced (no added latency). max_batch None: the runtime's batch size
    # for the engine (1 on CPU engines, 16 on GPUs): on a CPU coalescing bought no throughput and
    # cost RSS (benchmarks/results/service_coalescing.md).
    batch_wait_ms: float = 0.0
    max_batch: int | None = None
    lazy: bool = False
    idle_unload_s: float | None = None
    scan_batch: int = 16
    top_k_tags: int = 5
    cors: bool = False

    def __post_init__(self):
        from ..errors import InvalidOptionError

        if self.max_upload_mb <= 0:
            raise InvalidOptionError(f"--max-upload-mb must be > 0 (got {self.max_upload_mb})")
        if self.max_queue < 1:
            raise InvalidOptionError(f"--max-queue must be >= 1 (got {self.max_queue})")
        if self.max_batch is not None and self.max_batch < 1:
            raise InvalidOptionError(f"--max-batch must be >= 1 (got {self.max_batch})")
        if self.batch_wait_ms < 0:
            raise InvalidOptionError(f"--batch-wait-ms must be >= 0 (got {self.batch_wait_ms})")
        if self.idle_unload_s is not None and self.idle_unload_s <= 0:
            raise InvalidOptionError(f"--idle-unload-s must be > 0 (got {self.idle_unload_s})")
        if self.library is None:
            self.library = default_library_path()
