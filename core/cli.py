"""Argparse sub-commands; each is a thin wrapper over a ``core`` function.

A :class:`~core.errors.UserFacingError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import UserFacingError

Handler = Callable[[argparse.Namespace], int]


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print what a slice file holds: modality, size (px), pixel spacing (mm) or why it is unusable, HU range.

    Returns 0; an unreadable or unsuitable file raises :class:`UserFacingError` (one line, exit status 2).
    """
    from core.imaging import load_slice

    path = Path(args.file)
    if not path.is_file():
        raise UserFacingError(f"No file at {path}; check the path.")
    facts = load_slice(path.read_bytes(), path.name).summary()
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
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from core.bench import run_benchmarks

    report = run_benchmarks(quick=args.quick, out=Path(args.out) if args.out else None, train=args.train)
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="iCCA early-recurrence research tool")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="describe a CT slice file (DICOM, PNG, JPEG)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("bench", help="measure inference speed against the fp32 baseline")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--train", action="store_true", help="also measure training steps (paper configuration)")
    p.set_defaults(handler=cmd_bench)

    from core import analysis_cli, figures, training_cli  # analyze; figures; phantom / train / demo-model

    analysis_cli.register(sub)
    figures.register(sub)
    training_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
