"""Who is acting, and what their role lets them do: checked in ``core``, not only hidden on pages.

Three roles, each including the one before:

- **viewer** reads saved cases, the validation and the cohort;
- **analyst** also analyses, saves, records outcomes and exports (CSV, PDF): what leaves the
  system is an analyst's act;
- **admin** also deletes cases, approves checkpoints, changes the clinical model in use and
  reads the audit trail.

The actor of the current unit of work lives in a context variable: the dashboard sets it once
per page run (:func:`set_actor`), the command line once per command. Every guarded function in
``core`` calls :func:`require`; with no actor set, nothing guarded runs. The audit trail records
the actor's ``subject`` (an OIDC ``sub`` claim, ``local:<account>`` or ``cli:<account>``), never
a name or an e-mail address.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from core.errors import UserFacingError


class Role(IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    ANALYST = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Act(StrEnum):
    """What an actor does; the value is how a refusal names it."""

    READ = "read saved cases"
    ANALYSE = "analyse a case"
    SAVE = "save or edit a case"
    RECORD_OUTCOME = "record a follow-up"
    EXPORT = "export data"
    DELETE = "delete a case"
    APPROVE_MODEL = "approve a model"
    CHANGE_CLINICAL_MODEL = "change the clinical model"
    READ_AUDIT = "read the audit trail"


LEAST_ROLE: dict[Act, Role] = {
    Act.READ: Role.VIEWER,
    Act.ANALYSE: Role.ANALYST,
    Act.SAVE: Role.ANALYST,
    Act.RECORD_OUTCOME: Role.ANALYST,
    Act.EXPORT: Role.ANALYST,
    Act.DELETE: Role.ADMIN,
    Act.APPROVE_MODEL: Role.ADMIN,
    Act.CHANGE_CLINICAL_MODEL: Role.ADMIN,
    Act.READ_AUDIT: Role.ADMIN,
}


class NotPermittedError(UserFacingError):
    """The actor's role does not allow the act, or nobody is signed in."""


@dataclass(frozen=True)
class Actor:
    """A signed-in (or local) user: ``subject`` is what the audit trail records."""

    subject: str
    role: Role

    def may(self, act: Act) -> bool:
        return self.role >= LEAST_ROLE[act]


_current: ContextVar[Actor | None] = ContextVar("icca_actor", default=None)


@contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    """Run the enclosed work as ``actor`` (restored afterwards, also on error)."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def set_actor(actor: Actor | None) -> None:
    """Set the actor for the rest of this context: one Streamlit page run (its own thread) or one command."""
    _current.set(actor)


def current_actor() -> Actor | None:
    return _current.get()


def require(act: Act) -> Actor:
    """The current actor, if their role allows ``act``.

    Raises:
        NotPermittedError: nobody is signed in, or the role is too low; one sentence saying which.
    """
    actor = _current.get()
    if actor is None:
        raise NotPermittedError(f"Sign in to {act.value}.")
    if not actor.may(act):
        needed = LEAST_ROLE[act].label
        raise NotPermittedError(
            f"Your role ({actor.role.label}) may not {act.value}; an administrator can give you the {needed} role."
        )
    return actor


def command_line_actor() -> Actor:
    """Whoever runs ``python -m core``: an administrator of this installation, by their OS account."""
    return Actor(subject=f"cli:{getpass.getuser()}", role=Role.ADMIN)


LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
NETWORK_WITHOUT_SIGN_IN = (
    "This dashboard is reachable from the network and no sign-in is configured, so it shows nothing: run it on "
    "this computer only (`make run` listens on 127.0.0.1), or configure sign-in for a shared deployment (README)."
)


def local_actor(server_address: str) -> Actor | None:
    """The single local user, an administrator, when the server listens on loopback only; else ``None``.

    An empty address means every interface (Streamlit's default), which is not local.
    """
    if server_address.strip().lower() not in LOOPBACK_ADDRESSES:
        return None
    return Actor(subject=f"local:{getpass.getuser()}", role=Role.ADMIN)


NO_ROLE = (
    "You are signed in, but your account has no role in this dashboard; ask an administrator to add your "
    "account's subject to the viewer, analyst or admin list, or sign out and use another account."
)


def oidc_actor(subject: object, roles: Mapping[str, object]) -> Actor | None:
    """The signed-in user's actor: their highest role in ``roles`` (``{"admin": [sub, …], …}``), else ``None``.

    Subjects are the identity provider's ``sub`` claim, an opaque and stable account id. An
    account on no list has no role: signed in is not the same as allowed in.
    """
    if not isinstance(subject, str) or not subject:
        return None
    granted = [role for role in Role if subject in _subjects(roles.get(role.label))]
    return Actor(subject=f"oidc:{subject}", role=max(granted)) if granted else None


def _subjects(listed: object) -> frozenset[str]:
    if isinstance(listed, str):
        return frozenset({listed})
    if isinstance(listed, Iterable):
        return frozenset(str(s) for s in listed)
    return frozenset()
