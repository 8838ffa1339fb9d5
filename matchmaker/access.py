"""The access policy: which role may do which action, in one table.

Every API route names its action, and the route wrapper calls `authorize` before the handler
runs, so no handler can forget a check. Running attempts are not in this table: they prove
themselves with their per-attempt passkey (see passkeys.check).
"""

from __future__ import annotations

import enum

from .auth import Principal
from .engine import Site
from .errors import Forbidden


class Action(enum.StrEnum):
    READ = "read"                      # datasets, jobs, tasks, attempts, logs, pilots, sites
    SUBMIT = "submit"                  # submit a dataset
    CHANGE_DATASET = "change dataset"  # suspend, resume, reset, priority: owner or admin
    MANAGE = "manage"                  # users, sites, tokens, shares
    SITE = "site"                      # a factory reading its site's demand, getting pilot tokens
    PILOT = "pilot"                    # register, ask for tasks, sign off


RULES: dict[Action, frozenset[str]] = {
    Action.READ: frozenset({"admin", "user"}),
    Action.SUBMIT: frozenset({"admin", "user"}),
    Action.CHANGE_DATASET: frozenset({"admin", "user"}),
    Action.MANAGE: frozenset({"admin"}),
    Action.SITE: frozenset({"admin", "site"}),
    Action.PILOT: frozenset({"pilot"}),
}

_WHO = {"admin": "an admin", "user": "a user", "site": "a site's factory", "pilot": "a pilot"}
_DOING = {Action.READ: "read", Action.SUBMIT: "submit datasets",
          Action.CHANGE_DATASET: "change datasets", Action.MANAGE: "manage users and sites",
          Action.SITE: "act for a site", Action.PILOT: "act as a pilot"}


def authorize(principal: Principal, action: Action, *, owner_id: int | None = None,
              site: Site | None = None) -> None:
    """Raise Forbidden unless `principal` may do `action`: by role alone, or also on a dataset
    owned by `owner_id`, or at `site`, when those are given."""
    allowed = RULES[action]
    if principal.role not in allowed:
        needed = " or ".join(_WHO[r] for r in sorted(allowed))
        who = principal.name if principal.user is None else \
            f"{principal.name} ({_WHO[principal.role]})"
        raise Forbidden(f"{who} may not {_DOING[action]}: that needs {needed}")
    if action == Action.CHANGE_DATASET and owner_id is not None and principal.role == "user" \
            and principal.user is not None and principal.user.user_id != owner_id:
        raise Forbidden(f"{principal.name} may only change their own datasets; ask the owner "
                        "or an admin")
    if action == Action.SITE and principal.role == "site" and site is not None \
            and principal.site is not None and principal.site.site_id != site.site_id:
        raise Forbidden(f"the factory token of site {principal.site.name} cannot act for site "
                        f"{site.name}")
