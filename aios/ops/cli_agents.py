"""``aios agent create | sync | revoke | list``: agents' credentials (and their broker users), for operators.

Registered on the ``aios`` command by :func:`register`, so that this file owns its commands.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from aios.ops.cli_access import _fail, _say
from aios.wire.errors import AIOSError


@click.group()
def agent() -> None:
    """Agent credentials: every syscall is signed with its agent's credential."""


def _credentials() -> "Any":
    from aios.policy.identity import Credentials
    from aios.sdk.client import resolve_settings

    try:
        return Credentials(resolve_settings(None))
    except AIOSError as exc:
        _fail(exc)


@agent.command("create")
@click.argument("agent_id")
@click.option("--group", "groups", multiple=True, help="A privilege group the agent belongs to (repeatable).")
@click.option("--expires-in", "expires_in_s", type=float, default=None, help="Seconds until the credential expires.")
@click.option("--max-priority", type=click.IntRange(0, 9), default=9, show_default=True,
              help="The most urgent priority its syscalls may have (its broker user may push no higher).")
@click.option("--print-key", "--print-secret", "print_key", is_flag=True,
              help="Also print the agent's key, as the last line on stdout (for AIOS_AGENT_SECRET elsewhere).")
def agent_create(agent_id: str, groups: tuple[str, ...], expires_in_s: float | None, max_priority: int,
                 print_key: bool) -> None:
    """Issue a key for AGENT_ID (voiding any earlier one), make its broker user, and save the key for processes on
    this machine."""
    from aios.policy.identity import credential_file

    store = _credentials()
    try:
        issued = store.create(agent_id, groups=groups, expires_in_s=expires_in_s, max_priority=max_priority)
    except AIOSError as exc:
        _fail(exc)
    _say(f"credential for {agent_id!r} saved in {credential_file(store.settings, agent_id)}")
    if print_key:
        click.echo(issued.key)


@agent.command("sync")
def agent_sync() -> None:
    """Make every agent's broker user again from the kernel's records (a broker that restarted without them)."""
    from aios.policy.broker_users import BrokerUsers

    try:
        made = BrokerUsers(_credentials().settings).sync()
    except AIOSError as exc:
        _fail(exc)
    _say(f"{made} broker users made")


@agent.command("revoke")
@click.argument("agent_id")
def agent_revoke(agent_id: str) -> None:
    """Revoke AGENT_ID's credential: workers refuse its syscalls from now on."""
    if not _credentials().revoke(agent_id):
        _fail(ValueError(f"no agent {agent_id!r}; see `aios agent list`"))
    _say(f"credential of {agent_id!r} revoked")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True)
def agent_list(as_json: bool) -> None:
    """Agents with credentials."""
    creds = [c.public() for c in _credentials().list()]
    if as_json:
        click.echo(json.dumps(creds, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("agent", "created", "expires", "revoked", "groups")

    def fmt(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"

    for c in creds:
        t.add_row(c["agent_id"], fmt(c["created_at"]), fmt(c["expires_at"]), "yes" if c["revoked"] else "no",
                  ",".join(c["groups"]))
    Console().print(t)


def register(main: click.Group) -> None:
    main.add_command(agent)
