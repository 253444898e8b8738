"""The photo library (torch-free): SQLite store, incremental scan, search, near-duplicates.

    from edgeinfer.library import Store, LibraryModel, run_scan
    with Store("library.db") as store:
        models = [LibraryModel.from_artifact("artifacts/mobilevit_s"), LibraryModel.from_artifact("artifacts/clip")]
        stats = run_scan(store, "/photos", models)
"""
from __future__ import annotations

from .scan import LibraryModel, PhotoRecord, ScanError, ScanStats, plan_scan, process_batch, run_scan
from .store import PhotoResult, Store, StoreError

__all__ = ["Store", "StoreError", "PhotoResult", "LibraryModel", "PhotoRecord", "ScanStats", "ScanError",
           "plan_scan", "process_batch", "run_scan"]
