"""Generated test data every benchmark can share, built once into a cache.

`ct_series()` is the issue's reference series: 300 CT slices, 512x512, 16-bit, explicit VR
little endian (~157 MB), synthetic and deterministic (same bytes on every machine). The
generator itself lives with the Solent-vs-Orthanc comparison (`bench/compare_data.py`), which
also makes UID variants of it; this module is the one entry point other benchmarks use, so
there is one CT generator and one cache (``SOLENT_BENCH_CACHE``, default
/var/tmp/solent-bench-cache).
"""

from __future__ import annotations

from pathlib import Path

from bench import compare_data

CT_SLICES = 300
CT_SIZE = 512


def ct_series(slices: int = CT_SLICES, size: int = CT_SIZE) -> Path:
    """Folder of the cached CT series (``0000.dcm``...), generated on first use."""
    return compare_data.base_series(slices, size)


def ct_series_variant(variant: int, dest: Path, slices: int = CT_SLICES) -> Path:
    """A copy of the series with new Study/Series/SOP Instance UIDs (a new study) in ``dest``."""
    compare_data.write_variant(variant, dest, slices, CT_SIZE)
    return dest


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix == ".dcm")
