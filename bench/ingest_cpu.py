"""`python -m bench.ingest_cpu`: CPU per instance of ingest alone, in process (issue 14).

Spooled copies of the cached CT series go through ``Ingestor.ingest_file(move=True)`` into a
fresh SQLite archive, no network; ``time.process_time`` over the loop divided by the count is
the figure (CPU, so other load on the machine moves it less than wall time). ``--parse-only``
times ``parse_file`` alone on the same files (hash given, so not timed); ``--profile FILE``
writes a cProfile of the loop.

``--template FILE`` makes the series from a real file instead (each slice gets its own SOP
Instance UID, Instance Number and Image Position; everything else keeps the file's encoding).

`python -m bench.ingest_cpu [--slices 100] [--rounds 5] [--parse-only] [--profile out.prof]
[--template /work/shared/dicom-corpus/mod_ct_small.dcm]`
"""

from __future__ import annotations

import argparse
import cProfile
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.compare_data import write_variant

SLICES = 100


def _from_template(template: Path, dest: Path, slices: int, variant: int) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(template)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for i in range(slices):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-200.0, -200.0, round(-187.5 + 1.25 * i + variant, 2)]
        ds.save_as(dest / f"{i:04d}.dcm", enforce_file_format=True)


def _spool(src: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in sorted(src.glob("*.dcm")):
        target = dest / f.name
        shutil.copyfile(f, target)
        out.append(target)
    return out


def one_round(
    series: Path, work: Path, parse_only: bool, profile: cProfile.Profile | None
) -> float:
    """CPU ms per instance of one pass over ``series``."""
    from solent.app import build_archive
    from solent.dicom.parse import parse_file
    from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
    from solent.settings import load_settings

    files = _spool(series, work / "spool")
    if parse_only:
        start = time.process_time()
        if profile:
            profile.enable()
        for f in files:
            parse_file(f, sha256="0" * 64)  # the parse alone: hashing is timed by ingest
        if profile:
            profile.disable()
        return (time.process_time() - start) * 1000 / len(files)
    archive = build_archive(load_settings(environ={}, data_dir=work / "var"))
    try:
        archive.index.add_trust("ZZA", "Trust A")
        who = Principal(PrincipalKind.IMPORTER, "bench", "ZZA")
        start = time.process_time()
        if profile:
            profile.enable()
        for f in files:
            archive.ingestor.ingest_file(f, who, Provenance(Channel.IMPORT), move=True)
        if profile:
            profile.disable()
        return (time.process_time() - start) * 1000 / len(files)
    finally:
        archive.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=SLICES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parse-only", action="store_true")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--template", type=Path)
    args = ap.parse_args()
    profile = cProfile.Profile() if args.profile else None
    results = []
    with tempfile.TemporaryDirectory(prefix="solent-ingest-cpu-", dir="/var/tmp") as tmp:
        for r in range(args.rounds):
            series = Path(tmp) / f"series{r}"
            if args.template:
                _from_template(args.template, series, args.slices, r)
            else:
                write_variant(900 + r, series, count=args.slices)
            work = Path(tmp) / f"run{r}"
            results.append(one_round(series, work, args.parse_only, profile))
            shutil.rmtree(work)
    what = "parse_file" if args.parse_only else "ingest_file"
    print(
        f"{what}: CPU ms/instance median {statistics.median(results):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in results)})"
    )
    if profile and args.profile:
        profile.dump_stats(str(args.profile))


if __name__ == "__main__":
    main()
