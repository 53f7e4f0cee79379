"""``aios grant | revoke-grant | grants | group | audit | cancel | console-token``: the access manager, its
audit log, cancelling any agent's syscall, and the operator console's credential, for operators.

Registered on the ``aios`` command by :func:`register`, so that this file owns its commands.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from dataclasses import asdict
from typing import Any, NoReturn

import click

from aios.policy.access import MODES, RESOURCES
from aios.wire.errors import AIOSError

RESOURCE = click.Choice(list(RESOURCES))
MODE = click.Choice(list(MODES))


def _fail(message: object) -> NoReturn:
    click.secho(f"aios: {message}", fg="red", err=True)
    sys.exit(1)


def _say(msg: str) -> None:
    click.secho(f"[aios] {msg}", fg="cyan", err=True)


def _operator() -> str:
    """Who made a change, as the audit log names it: the OS user running the command."""
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "operator"


def _run(action: Any) -> Any:
    """Run ``action(manager)``, turning every expected failure into a message and exit status 1."""
    import redis

    from aios.policy.access import AccessManager
    from aios.sdk.client import resolve_settings

    try:
        settings = resolve_settings(None)
        manager = AccessManager(settings)
        try:
            return action(manager)
        finally:
            manager.redis.close()
    except (AIOSError, ValueError) as exc:
        _fail(exc)
    except redis.RedisError as exc:
        _fail(f"cannot reach the kernel's Redis: {exc}; is the kernel up (`aios up`)? check AIOS_REDIS_URL")


def _table(columns: list[str], rows: list[list[str]], empty: str, styles: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        Console(stderr=True).print(f"[yellow]{empty}[/yellow]")
        return
    t = Table(*columns)
    for i, r in enumerate(rows):  # escaped: a path like "a[1].txt" is data, not rich markup
        t.add_row(*(escape(c) for c in r), style=styles[i] if styles else None)
    Console().print(t)


def register(main: click.Group) -> None:
    """Add the access commands to the ``aios`` group."""

    @main.command("cancel")
    @click.argument("syscall_id")
    def cancel(syscall_id: str) -> None:
        """Cancel SYSCALL_ID, any agent's: if queued it never starts, if running it is stopped where its service
        can (an LLM generation within one engine step); its caller gets `Cancelled`."""
        from aios.sdk.client import resolve_settings
        from aios.state.connections import state_client
        from aios.state.keys import CANCEL_ANY
        from aios.worker.cancels import keys_ok, record

        if not keys_ok(syscall_id):
            _fail(f"{syscall_id!r} is not a syscall id (8-64 letters, digits, '_' or '-')")
        try:
            settings = resolve_settings(None)
            recorded = record(state_client(settings), settings, syscall_id, CANCEL_ANY)
        except AIOSError as exc:
            _fail(exc)
        if not recorded:
            _fail(f"syscall {syscall_id} is answered already: nothing to cancel")
        _say(f"cancelled {syscall_id}: its caller gets Cancelled (a running tool that cannot be stopped is "
             "abandoned)")

    @main.command("grant")
    @click.argument("owner")
    @click.argument("grantee")
    @click.argument("resource", type=RESOURCE)
    @click.argument("mode", type=MODE)
    def grant(owner: str, grantee: str, resource: str, mode: str) -> None:
        """Let GRANTEE read or write OWNER's memory or files (write implies read); replaces an earlier grant."""
        previous = _run(lambda m: m.grant(owner, grantee, resource, mode, by=_operator()))
        was = f" (was {previous})" if previous else ""
        _say(f"'{grantee}' may now {mode} '{owner}''s {resource}{was}")

    @main.command("revoke-grant")
    @click.argument("owner")
    @click.argument("grantee")
    @click.argument("resource", type=RESOURCE)
    def revoke_grant(owner: str, grantee: str, resource: str) -> None:
        """Withdraw GRANTEE's grant on OWNER's memory or files (a shared group may still give read access)."""
        previous = _run(lambda m: m.revoke(owner, grantee, resource, by=_operator()))
        if previous is None:
            _fail(f"'{grantee}' has no grant on '{owner}''s {resource}; see `aios grants {owner}`")
        _say(f"'{grantee}''s {previous} grant on '{owner}''s {resource} revoked")

    @main.command("grants")
    @click.argument("owner", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def grants(owner: str | None, as_json: bool) -> None:
        """The grants OWNER gave (default: every owner's)."""
        found: list[dict[str, str]] = _run(lambda m: m.grants(owner))
        if as_json:
            click.echo(json.dumps(found, indent=2))
            return
        _table(["owner", "grantee", "resource", "mode"],
               [[g["owner"], g["grantee"], g["resource"], g["mode"]] for g in found], "no grants")

    @main.group("group")
    def group() -> None:
        """Privilege groups: members may read each other's memory and files (writing needs a grant)."""

    @group.command("add")
    @click.argument("group_name", metavar="GROUP")
    @click.argument("agent")
    def group_add(group_name: str, agent: str) -> None:
        """Put AGENT in GROUP."""
        added = _run(lambda m: m.add_to_group(group_name, agent, by=_operator()))
        _say(f"'{agent}' {'added to' if added else 'was already in'} group '{group_name}'")

    @group.command("remove")
    @click.argument("group_name", metavar="GROUP")
    @click.argument("agent")
    def group_remove(group_name: str, agent: str) -> None:
        """Take AGENT out of GROUP, whether `aios group add` or `aios agent create --group` put it there."""
        if not _run(lambda m: m.remove_from_group(group_name, agent, by=_operator())):
            _fail(f"'{agent}' is not in group '{group_name}'; see `aios group list`")
        _say(f"'{agent}' removed from group '{group_name}'")

    @group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def group_list(as_json: bool) -> None:
        """Every group membership, and where it comes from (credential or `aios group add`)."""
        found: list[dict[str, str]] = _run(lambda m: m.groups())
        if as_json:
            click.echo(json.dumps(found, indent=2))
            return
        _table(["group", "agent", "via"], [[g["group"], g["agent"], g["via"]] for g in found], "no groups")

    @main.group("audit", invoke_without_command=True)
    @click.option("--agent", default=None, help="Only entries where this agent is the actor, owner or target.")
    @click.option("--denied", is_flag=True, help="Only denied accesses.")
    @click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.pass_context
    def audit(ctx: click.Context, agent: str | None, denied: bool, limit: int, as_json: bool) -> None:
        """The audit log, newest first: cross-agent access decisions and grant and group changes.
        `aios audit verify` checks its hash chain."""
        if ctx.invoked_subcommand is not None:
            return
        entries: list[dict[str, Any]] = _run(
            lambda m: m.audit.query(agent=agent, decision="deny" if denied else None, limit=limit))
        if as_json:
            click.echo(json.dumps(entries, indent=2))
            return
        colour = {"allow": "green", "deny": "red", "change": "cyan"}
        _table(["time", "decision", "actor", "op", "owner", "resource", "target", "reason"], [
            [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])), e["decision"], e["actor"], e["op"],
             e["owner"], e["resource"], e["target"], e["reason"]] for e in entries
        ], "no audit entries", styles=[colour.get(e["decision"], "") for e in entries])

    @main.command("console-token")
    @click.option("--rotate", is_flag=True, help="Issue a new token, voiding the old one.")
    def console_token(rotate: bool) -> None:
        """The operator console's token (never an agent's key), as the last line on stdout. Open the console at
        http://HOST:PORT/console#token=<token>, or paste it into the page."""
        from aios.policy.identity import console_token as make

        token = _run(lambda m: make(m.settings, m.redis, rotate=rotate))
        _say("a new console token: the old one no longer opens the console" if rotate else
             "the operator console's token: keep it like the master key")
        click.echo(token)

    @audit.command("verify")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def audit_verify(as_json: bool) -> None:
        """Check the audit log's hash chain: every break (a deleted, altered or forged entry); exit status 1 if any.
        Note the head it prints somewhere else: a later check shows whether the log still extends it."""
        result = _run(lambda m: m.audit.verify())
        if as_json:
            click.echo(json.dumps(asdict(result) | {"ok": result.ok}, indent=2))
        else:
            span = f"positions {result.first}..{result.n}" if result.checked else "no chained entries"
            old = f", {result.unchained} older unchained entries before them" if result.unchained else ""
            click.echo(f"{result.checked} entries checked ({span}{old}); head {result.head}")
            for b in result.breaks:
                click.secho(f"BROKEN ({b.kind}): {b.detail}", fg="red")
        if not result.ok:
            _fail(f"the audit log's chain is broken in {len(result.breaks)} place(s): the first is "
                  f"{result.breaks[0].detail}")
        if not as_json:
            _say("the audit log's chain holds")
