"""``python -m core db backup|restore|check``: the case database's backups and the check of its arrays."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import UserFacingError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="back up, restore or check the case database")
    actions = p.add_subparsers(dest="db_action", required=True)
    for name, help_text in (
        ("backup", "write a consistent backup (SQLite online backup; pg_dump for PostgreSQL) to a new file"),
        ("restore", "restore a backup, upgrade it to this release's schema and verify every array"),
        ("check", "verify every stored array against its checksum"),
    ):
        action = actions.add_parser(name, help=help_text)
        if name != "check":
            action.add_argument("path", help="the backup file")
        if name == "restore":
            action.add_argument(
                "--replace", action="store_true", help="replace a database that holds cases (saved to a file first)"
            )
        action.add_argument(
            "--database", default=None, help="SQLAlchemy URL (default: $ICCA_DATABASE_URL or data/icca.db)"
        )
        action.set_defaults(handler=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    """Print one sentence on what was backed up, restored or checked; 1 when a check finds damage."""
    from sqlalchemy.exc import SQLAlchemyError

    from core import backup, db

    url = args.database or db.configured_url()
    try:
        if args.db_action == "backup":
            print(backup.backup(url, Path(args.path)))
            return 0
        if args.db_action == "restore":
            restored = backup.restore(url, Path(args.path), replace=args.replace)
            print(restored.sentence(Path(args.path).name))
            return 1 if restored.check.damaged else 0
        engine = db.make_engine(url)
        try:
            check = backup.check_database(engine)
        finally:
            engine.dispose()
        print(check.sentence())
        return 1 if check.damaged else 0
    except SQLAlchemyError as error:  # the type only: a driver's message can carry the URL
        raise UserFacingError(
            f"The case database cannot be reached ({type(error).__name__}); check --database or ICCA_DATABASE_URL."
        ) from None
