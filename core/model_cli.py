"""``python -m core model allow PATH | allowed``: the allow-list of checkpoints the dashboard may load."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="approve a checkpoint for the dashboard (allow-list by sha256), or list them")
    actions = p.add_subparsers(dest="model_action", required=True)
    allow = actions.add_parser("allow", help="add a checkpoint's sha256 to the allow-list (read safely first)")
    allow.add_argument("path", help="the checkpoint (.pt)")
    allow.set_defaults(handler=cmd_model)
    listed = actions.add_parser("allowed", help="list the approved sha256s and the allow-list file")
    listed.set_defaults(handler=cmd_model)


def cmd_model(args: argparse.Namespace) -> int:
    """Approve a checkpoint (only a readable one: its card names it in the list), or print the list."""
    from models.checkpoint import add_to_allowlist, configured_allowlist, read_hashed_checkpoint

    allowlist = configured_allowlist()
    if args.model_action == "allow":
        path = Path(args.path)
        # weights_only: approving never runs code from the file; the sha256 approved is that of the card read
        payload, sha256 = read_hashed_checkpoint(path)
        card = payload["card"]
        add_to_allowlist(sha256, f"{card.get('name', 'unnamed model')} ({path.name})")
        print(f"approved {path.name} (sha256 {sha256}) in {allowlist}")
        return 0
    print(f"allow-list: {allowlist}")
    print(allowlist.read_text().rstrip() if allowlist.is_file() else "(empty: no model is approved)")
    return 0
