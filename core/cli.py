"""Argparse sub-commands; each is a thin wrapper over a ``core`` function.

A :class:`~core.errors.UserFacingError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.access import acting_as, command_line_actor
from core.errors import UserFacingError
from core.provenance import DATA_SOURCES

Handler = Callable[[argparse.Namespace], int]


def cmd_inspect(args: argparse.Namespace) -> int:
    """Describe a slice file, a folder or a ZIP: every series, its geometry, compression and decode status.

    A single CT file: modality, size (px), pixel spacing (mm) or why it is unusable, HU range.
    A folder or ZIP: per series the modality, description, slices, rows × columns, spacing,
    thickness, kernel, contrast, compression, HU range and decode status (every slice is
    decoded unless ``--headers-only``), then the other files.

    Returns 0; an unreadable or unsuitable single file, or an upload that is refused, raises
    :class:`UserFacingError` (one line, exit status 2). A single DICOM SEG or NIfTI file is
    refused with a sentence saying it can be imported as an outline.
    """
    from core.archive import check_file_count, check_total_bytes, is_zip

    path = Path(args.path)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file())
        check_file_count(len(found), "The folder holds")
        check_total_bytes(sum(p.stat().st_size for p in found), "The folder holds")
        files = [(str(p.relative_to(path)), p.read_bytes()) for p in found]
        return _inspect_upload(files, "folder", args)
    if not path.is_file():
        raise UserFacingError(f"No file or folder at {path}; check the path.")
    data = path.read_bytes()
    if is_zip(data):
        return _inspect_upload([(path.name, data)], "zip", args)
    _refuse_outline_file(data, path.name)
    from core.imaging import load_slice

    facts = load_slice(data, path.name).summary()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    spacing = facts["pixel_spacing_mm"]
    if spacing:
        spacing_text = f"{spacing[0]:.4g} × {spacing[1]:.4g} mm"
    elif facts["source"] == "dicom":
        spacing_text = f"unusable: {facts['pixel_spacing_problem'] or 'it has no usable PixelSpacing'}"
    else:
        spacing_text = "unknown (raster export)"
    print(f"modality        {facts['modality']}")
    print(f"rows × columns  {facts['rows']} × {facts['columns']}")
    print(f"pixel spacing   {spacing_text}")
    if facts["hu_min"] is not None:
        print(f"HU min / max    {facts['hu_min']:.0f} / {facts['hu_max']:.0f} HU")
    else:
        print(f"grey min / max  {facts['grey_min']:.0f} / {facts['grey_max']:.0f} (already windowed, no HU)")
    if facts.get("compression"):
        print(f"compression     {facts['compression']}")
    if facts.get("lossy"):
        print(f"lossy           {facts['lossy']}: HU are approximate")
    if facts.get("file_window"):
        level, width = facts["file_window"]
        print(f"file window     L{level:g} / W{width:g} HU")
    return 0


def _refuse_outline_file(data: bytes, name: str) -> None:
    """A single DICOM SEG / RT / SR or NIfTI file: one sentence saying what it is (exit status 2)."""
    from core.series import dicom_object_kind, is_nifti, read_header

    if is_nifti(data, name):
        raise UserFacingError(
            "This file is a NIfTI volume, not a CT image; it can be imported as an outline on its CT series."
        )
    header = read_header(data)
    what = dicom_object_kind(header) if header is not None else None
    if what is None:
        return
    if what.startswith("a DICOM segmentation"):
        labels = [str(item.get("SegmentLabel", "") or "").strip() for item in header.get("SegmentSequence", [])]
        named = ", ".join(repr(label) for label in labels if label)
        count = f" with {len(labels)} segment{'s' if len(labels) != 1 else ''}{f' ({named})' if named else ''}"
        raise UserFacingError(
            f"This file is a DICOM segmentation (SEG){count}, not a CT image; it can be imported as an outline "
            "on its CT series."
        )
    raise UserFacingError(f"This file is {what}, not an image; a CT is needed.")


def _inspect_upload(files: list[tuple[str, bytes]], source: str, args: argparse.Namespace) -> int:
    from core.series import decode_report, scan_upload

    scan = scan_upload(files)
    series = []
    for summary in scan.series:
        facts = summary.as_dict()
        if summary.usable and not args.headers_only:
            facts["decode"] = decode_report(scan, summary.key)
        else:
            facts["decode"] = None
        series.append(facts)
    report = {
        "source": source,
        "files": len(scan.files),
        "series": series,
        "other_files": [other.as_dict() for other in scan.others],
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{source}: {len(scan.files)} files, {len(series)} series")
    for number, facts in enumerate(series, start=1):
        print(f"\nseries {number}  {facts['description'] or '(no description)'}  [{facts['key']}]")
        print(f"  modality        {facts['modality']}")
        print(f"  slices          {facts['slices']} (ordered by {facts['sorted_by']})")
        print(f"  rows × columns  {facts['rows']} × {facts['columns']}")
        spacing = facts["pixel_spacing_mm"]
        print(f"  pixel spacing   {f'{spacing[0]:.4g} × {spacing[1]:.4g} mm' if spacing else 'unknown'}")
        thickness, step = facts["slice_thickness_mm"], facts["slice_spacing_mm"]
        print(
            f"  thickness       {f'{thickness:g} mm' if thickness else 'unknown'}"
            f"{f' (slices every {step:g} mm)' if step else ''}"
        )
        print(f"  kernel          {facts['kernel'] or 'unknown'}")
        print(f"  contrast        {'yes' if facts['contrast_given'] else 'no'} ({facts['contrast_evidence']})")
        lossy = f" — {facts['lossy']}: HU are approximate" if facts["lossy"] else ""
        print(f"  compression     {facts['compression']}{lossy}")
        decode = facts["decode"]
        if decode and decode["hu_min"] is not None:
            print(f"  HU min / max    {decode['hu_min']:.0f} / {decode['hu_max']:.0f} HU")
        if facts["unusable"]:
            status = facts["unusable"]
        elif decode is None:
            status = "not decoded (--headers-only)"
        elif decode["failed"]:
            status = f"{decode['failed']} of {facts['slices']} slices failed: {decode['status']}"
        else:
            status = f"ok ({decode['decoded']} slices decoded)"
        print(f"  decode          {status}")
        for note in facts["notes"]:
            print(f"  note            {note}")
    for other in report["other_files"]:
        tail = " — can be imported as an outline" if other["importable_as_outline"] else " — ignored"
        print(f"\nfile {other['name']}: {other['what']}{tail}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from core.predict import predict_manifest
    from core.training import init_distributed, world
    from models.checkpoint import load_checkpoint

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device)
    model = load_checkpoint(Path(args.model) if args.model else None)
    summary = predict_manifest(Path(args.manifest), Path(args.out), model, device=device)
    if world()[0] == 0:
        print(f"scored {summary.scored} patient(s), {summary.reused} already in {summary.path}")
    return 0


def cmd_export_cohort(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from core import db
    from core.export_cohort import export_cohort

    engine = db.make_engine(args.database)
    try:
        with Session(engine) as session:
            summary = export_cohort(session, Path(args.out), args.data_source)
    finally:
        engine.dispose()
    print(
        f"wrote {summary.written} case(s) to {summary.manifest} ({summary.unknown_outcome} left out: outcome unknown "
        f"or not recorded); train with: python -m core train --manifest {summary.manifest} --out RUN_DIR"
    )
    return 0


def cmd_table1(args: argparse.Namespace) -> int:
    from core.table1 import format_table1, table1_from_csv

    table = table1_from_csv(Path(args.cohort), args.group)
    print(json.dumps(table.to_dict()) if args.json else format_table1(table))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="iCCA early-recurrence research tool")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="describe a CT slice file (DICOM, PNG, JPEG), a folder or a ZIP of series")
    p.add_argument("path", help="a file, a folder or a .zip")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--headers-only", action="store_true", help="folder / ZIP: read headers, decode no pixels")
    p.set_defaults(handler=cmd_inspect)

    from core import (
        analysis_cli,
        bench,
        clinical_cli,
        db_cli,
        figures,
        model_cli,
        training_cli,
    )  # analyze; figures; phantom / train / demo-model

    p = sub.add_parser("bench", help="measure inference speed against the fp32 eager baseline, in one run")
    bench.add_arguments(p)
    p.set_defaults(handler=bench.cmd_bench)

    clinical_cli.register(sub)
    db_cli.register(sub)
    model_cli.register(sub)

    p = sub.add_parser("predict", help="score every patient of a manifest with the installed model (resumable)")
    p.add_argument("--manifest", required=True, help="cohort manifest CSV (as for train)")
    p.add_argument("--out", required=True, help="folder for predictions.csv")
    p.add_argument("--model", default=None, help="checkpoint (default: $ICCA_MODEL_PATH or models/weights/model.pt)")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("export-cohort", help="write the saved cases with a known outcome as a training manifest")
    p.add_argument("--out", required=True, help="folder for images/, masks/ and manifest.csv")
    p.add_argument("--data-source", required=True, choices=sorted(DATA_SOURCES), help="what the saved images are")
    p.add_argument("--database", default=None, help="SQLAlchemy URL (default: $ICCA_DATABASE_URL or data/icca.db)")
    p.set_defaults(handler=cmd_export_cohort)

    p = sub.add_parser("table1", help="the paper's Table 1 for a cohort CSV: two groups compared variable by variable")
    p.add_argument("--cohort", required=True, help="CSV, one row per patient, a header row")
    p.add_argument("--group", required=True, help="the column holding the two groups (e.g. early_recurrence)")
    p.add_argument("--json", action="store_true", help='one JSON object: {"variables": {NAME: {"test", "p_value", …}}}')
    p.set_defaults(handler=cmd_table1)

    analysis_cli.register(sub)
    figures.register(sub)
    training_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        with acting_as(command_line_actor()):  # whoever runs the command line administers this installation
            return handler(args)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
