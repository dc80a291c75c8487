"""Roles enforced in core, and the audit trail: who, what, which case, model and input; append-only."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import db
from core.access import Act, Actor, NotPermittedError, Role, acting_as, local_actor, require, set_actor
from core.outcomes import FollowUp
from tests.core.test_db import _new_case

VIEWER, ANALYST, ADMIN = (Actor(f"oidc:{r.label}-sub", r) for r in Role)


def test_each_role_may_do_what_it_includes_and_no_more() -> None:
    allowed = {role: {act for act in Act if Actor("x", role).may(act)} for role in Role}
    assert allowed[Role.VIEWER] == {Act.READ}
    assert allowed[Role.ANALYST] == {Act.READ, Act.ANALYSE, Act.SAVE, Act.RECORD_OUTCOME, Act.EXPORT}
    assert allowed[Role.ADMIN] == set(Act)


def test_a_refusal_is_one_sentence_naming_the_role_needed_and_nobody_signed_in_may_do_nothing() -> None:
    with acting_as(VIEWER), pytest.raises(NotPermittedError) as refused:
        require(Act.DELETE)
    assert str(refused.value) == (
        "Your role (viewer) may not delete a case; an administrator can give you the admin role."
    )
    set_actor(None)
    with pytest.raises(NotPermittedError, match=r"^Sign in to read saved cases\.$"):
        require(Act.READ)


def test_core_refuses_what_the_role_does_not_allow_and_changes_nothing(engine) -> None:
    with Session(engine) as session:
        case = db.add_case(session, *_new_case("P-roles"))
        session.commit()
        case_id = case.id
    with Session(engine) as session, acting_as(VIEWER):
        assert [c.case_key for c in db.list_cases(session)] == ["P-roles"]
        with pytest.raises(NotPermittedError, match="viewer"):
            db.add_case(session, *_new_case("P-by-viewer"))
        with pytest.raises(NotPermittedError, match="viewer"):
            db.record_outcome(session, case_id, FollowUp(days_to_recurrence=90, days_followed=None))
    with Session(engine) as session, acting_as(ANALYST):
        assert db.record_outcome(session, case_id, FollowUp(days_to_recurrence=90, days_followed=None))
        with pytest.raises(NotPermittedError, match="analyst"):
            db.delete_case(session, case_id)
        with pytest.raises(NotPermittedError, match="analyst"):
            db.use_clinical_model(session, None)
        session.commit()
    with Session(engine) as session:
        assert len(db.list_cases(session)) == 1 and db.latest_outcome(session, case_id).days_to_recurrence == 90


def test_the_audit_trail_says_who_did_what_with_which_model_and_input(engine) -> None:
    new_case, analysis = _new_case("P-audit")
    with Session(engine) as session, acting_as(ANALYST):
        case = db.add_case(session, new_case, analysis)
        session.flush()
        db.record_outcome(session, case.id, FollowUp(days_to_recurrence=None, days_followed=400))
        session.commit()
        case_id = case.id
    with Session(engine) as session, acting_as(ADMIN):
        db.delete_case(session, case_id)
        session.commit()
    with Session(engine) as session:
        events = session.scalars(select(db.AuditEvent).order_by(db.AuditEvent.id)).all()
    assert [(e.action, e.actor, e.case_key) for e in events] == [
        ("case_saved", "oidc:analyst-sub", "P-audit"),
        ("outcome_recorded", "oidc:analyst-sub", "P-audit"),
        ("case_deleted", "oidc:admin-sub", "P-audit"),
    ]
    assert events[0].model_sha256 == analysis.model_sha256
    assert events[0].input_sha256 == db.pixels_sha256(new_case.pixels) and len(events[0].input_sha256) == 64


def test_the_database_refuses_to_change_or_remove_an_audit_event(engine) -> None:
    """Append-only by trigger: even SQL with the application's own credentials cannot rewrite history."""
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-history"))
        session.commit()
    statements = ["UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events"]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with Session(engine) as session:
        [event] = session.scalars(select(db.AuditEvent)).all()
    assert event.actor == "test:admin"


@pytest.mark.parametrize(
    ("address", "local"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("", False), ("0.0.0.0", False), ("10.1.2.3", False)],
)
def test_the_single_local_user_exists_only_on_a_loopback_address(address: str, local: bool) -> None:
    actor = local_actor(address)
    assert (actor is not None) == local
    if actor is not None:
        assert actor.role is Role.ADMIN and actor.subject.startswith("local:")


def test_exports_need_the_analyst_role_and_each_is_audited(engine) -> None:
    from core.audit import audit_csv, list_events, record_export

    with Session(engine) as session, acting_as(VIEWER), pytest.raises(NotPermittedError, match="export data"):
        record_export(session, "case table CSV")
    with Session(engine) as session, acting_as(ANALYST):
        record_export(session, "case report PDF", "P-1", "a" * 64)
        session.commit()
        with pytest.raises(NotPermittedError, match="audit trail"):
            list_events(session)
    with Session(engine) as session, acting_as(ADMIN):
        [row] = list_events(session)
    assert audit_csv([row]).splitlines()[1].endswith(f",oidc:analyst-sub,exported,P-1,{'a' * 64},,what=case report PDF")


def test_a_signed_in_account_gets_its_highest_listed_role_and_an_unlisted_one_none() -> None:
    from core.access import oidc_actor

    roles = {"viewer": ["ann", "bob"], "analyst": ["bob"], "admin": "cat"}
    assert oidc_actor("ann", roles) == Actor("oidc:ann", Role.VIEWER)
    assert oidc_actor("bob", roles) == Actor("oidc:bob", Role.ANALYST)
    assert oidc_actor("cat", roles) == Actor("oidc:cat", Role.ADMIN)
    assert oidc_actor("eve", roles) is None and oidc_actor(None, roles) is None and oidc_actor("", roles) is None
