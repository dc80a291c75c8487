"""``python -m core clinical``: the paper's N-category model, its refits on local patients, and which one is in use."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from core.clinical_refit import FORMULAS, ClinicalRefit, describe, model_in_use, refit
from core.errors import UserFacingError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clinical",
        help="the N-category logistic regression (odds ratio, risks, 95%% CIs); refit on local patients; versions",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--refit", choices=sorted(FORMULAS), help="refit this model on local patients with a known outcome")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--cohort", help="CSV with early_recurrence, n_category [, t_category, margin] columns")
    source.add_argument("--saved-cases", action="store_true", help="the saved cases with a known outcome")
    p.add_argument("--store", action="store_true", help="with --refit: keep the fit as a new version in the database")
    p.add_argument("--use", metavar="VERSION", help="put a stored version in use on the dashboard, or 'paper'")
    p.add_argument("--versions", action="store_true", help="list the stored versions and the one in use")
    p.add_argument("--database", default=None, help="SQLAlchemy URL (default: $ICCA_DATABASE_URL or data/icca.db)")
    p.set_defaults(handler=cmd_clinical)


def cmd_clinical(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    try:
        return _dispatch(args)
    except IntegrityError:
        raise UserFacingError(
            "Another change to the clinical models was saved at the same moment; try again."
        ) from None
    except SQLAlchemyError as error:  # the type only: a driver's message can carry the URL
        raise UserFacingError(
            f"The case database cannot be reached ({type(error).__name__}); check --database or ICCA_DATABASE_URL. "
            "Nothing was changed."
        ) from None


def _dispatch(args: argparse.Namespace) -> int:
    if args.refit:
        return _refit(args)
    if args.use is not None:
        return _use(args)
    if args.versions:
        return _versions(args)
    if args.cohort or args.saved_cases or args.store:
        raise UserFacingError("--cohort, --saved-cases and --store go with --refit N or --refit N+T+margin.")
    return _paper(args)


def _paper(args: argparse.Namespace) -> int:
    from core.clinical import model_summary, paper_model

    summary = model_summary(paper_model())
    if args.json:
        print(json.dumps(summary))
        return 0
    low, high = summary["odds_ratio_ci"]
    print(f"{summary['model']}, fitted to {summary['fitted_to']}")
    print(
        f"odds ratio N1 vs N0: {summary['odds_ratio']:.3f} (95% CI {low:.3f}–{high:.3f}), Wald p = {summary['wald_p']:.4f}"
    )
    for category, risk in summary["risk"].items():
        r_low, r_high = summary["risk_ci"][category]
        print(f"risk of early recurrence, {category}: {risk:.1%} (95% CI {r_low:.1%}–{r_high:.1%})")
    return 0


def _session(args: argparse.Namespace) -> Any:
    from sqlalchemy.orm import Session

    from core import db

    engine = db.make_engine(args.database)
    db.migrate(engine)
    return Session(engine)


def _refit(args: argparse.Namespace) -> int:
    from core import db
    from core.clinical_refit import observations_from_cases, observations_from_csv

    if args.cohort:
        path = Path(args.cohort)
        observations = observations_from_csv(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        fitted_to = f"cohort CSV {path.name} (sha256 {digest}…)"
    elif args.saved_cases:
        from core.cases import list_case_summaries

        if "R1" in FORMULAS[args.refit]:
            raise UserFacingError(
                f"Saved cases record no surgical margin, which {args.refit} needs; refit it on a cohort CSV with a "
                "margin column (--cohort), or refit N alone on the saved cases."
            )

        with _session(args) as session:
            observations = observations_from_cases(list_case_summaries(session))
        fitted_to = f"{len(observations)} saved cases with a known outcome"
    else:
        raise UserFacingError("Say which patients to refit on: --cohort CSV or --saved-cases.")
    result: ClinicalRefit = refit(observations, args.refit)
    payload = {**result.to_dict(), "fitted_to": fitted_to}
    if args.store:
        with _session(args) as session:
            row = db.add_clinical_model(session, result.to_dict(), fitted_to)
            session.commit()
            payload["version"] = row.id
    if args.json:
        print(json.dumps(payload))
        return 0
    print(describe(result))
    print(f"  fitted to {fitted_to}")
    if args.store:
        hint = f"put it in use with --use {payload['version']}" if result.preoperative else "not usable preoperatively"
        print(f"stored as version {payload['version']}; {hint}")
    return 0


def _use(args: argparse.Namespace) -> int:
    from core import db

    choice = args.use.strip().lower()
    if choice != "paper" and not choice.isdigit():
        raise UserFacingError(f"--use takes a version number or 'paper', not {args.use!r}.")
    with _session(args) as session:
        try:
            db.use_clinical_model(session, None if choice == "paper" else int(choice))
        except LookupError:
            raise UserFacingError(f"There is no clinical model version {choice}; --versions lists them.") from None
        except ValueError:
            raise UserFacingError(
                f"Version {choice} uses the surgical margin, known only after resection: it cannot give the "
                "dashboard's preoperative risk; refit N alone to use a local model."
            ) from None
        session.commit()
        print(f"in use on the dashboard: {model_in_use(db.clinical_model_in_use(session)).name}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from core import db

    with _session(args) as session:
        rows = db.list_clinical_models(session)
        current = model_in_use(db.clinical_model_in_use(session))
        listed = [
            {
                "version": r.id,
                "created_at": r.created_at.isoformat(),
                "formula": r.formula,
                "fitted_to": r.fitted_to,
                "n": r.fit["n"],
                "events": r.fit["events"],
                "auc": r.fit["auc"],
                "in_use": bool(r.in_use),
            }
            for r in rows
        ]
    if args.json:
        print(json.dumps({"in_use": current.name, "versions": listed}))
        return 0
    print(f"in use on the dashboard: {current.name}")
    for v in listed:
        mark = " (in use)" if v["in_use"] else ""
        print(
            f"  version {v['version']}{mark}: {v['formula']}, {v['n']} patients, {v['events']} events, apparent AUC "
            f"{v['auc']:.3f}, fitted to {v['fitted_to']} on {v['created_at'][:10]}"
        )
    return 0
