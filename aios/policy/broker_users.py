"""Per-agent broker users: what an agent's own broker connection may do (``AIOS_BROKER_USERS=on``).

An agent reaches the broker as ``agent-<id>`` with a password derived from its key
(:func:`aios.policy.identity.broker_password`); workers and operator commands use the kernel's user.

- **Redis / Valkey** (ACL selectors, Redis 7 or Valkey 8): the agent may LPUSH onto the kernel's queue lists of
  the priorities it is granted (kombu's per-priority lists, up to its ``max_priority``), LLEN any of them
  (admission control), and pop its own replies (``aios:reply:<id>:*``). Nothing else: no read of a queue's
  contents, no other key, no ACL, no CONFIG, no pub/sub.
- **RabbitMQ**: the agent may write to the kernel's exchanges (one per queue), and configure and read only its
  own reply queue ``aios.reply.<id>``; the kernel publishes with ``user_id`` checked by the broker.

Made by :meth:`BrokerUsers.create` (``aios agent create``), removed by :meth:`BrokerUsers.revoke`, all made again
from the credential records by :meth:`BrokerUsers.sync` (``aios up`` at start, ``aios agent sync``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

import kombu
import redis

from aios.broker.publish import refused_by_broker as refused_by_broker  # re-exported: where it was first
from aios.broker.queues import step_list
from aios.broker.reply_queues import reply_queue_name
from aios.settings import Settings, all_queues, broker_to_redis_py
from aios.state import keys
from aios.wire.errors import ConfigError
from aios.wire.priority import MAX_PRIORITY, is_redis_url

KOMBU: Any = kombu  # kombu ships no type hints

AGENT_COMMANDS = ("+lpush", "+blpop", "+lpop", "+ping", "+hello", "+client|setinfo", "+client|setname", "+select",
                  "+echo")
"""The commands an agent's Redis user may run (the SDK's publish, reply wait and the connection's handshake)."""


def with_user(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password`` as its credentials (replacing any)."""
    return _join(urlsplit(url), f"{quote(user, safe='')}:{quote(password, safe='')}@")


def without_user(url: str) -> str:
    """``url`` without its credentials (to show, or to hand to agents that add their own)."""
    return _join(urlsplit(url), "")


def _join(parts: SplitResult, userinfo: str) -> str:
    """A URL again, with ``userinfo`` (``user:password@`` or nothing); kept as ``scheme://`` even when it has no
    host, as unix-socket URLs (``unix:///path``, ``redis+socket:///path``) have none."""
    host = parts.netloc.rsplit("@", 1)[-1]
    url = f"{parts.scheme}://{userinfo}{host}{parts.path}"
    return url + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def agent_settings(settings: Settings, agent_id: str, key: str) -> Settings:
    """``settings`` as agent ``agent_id``'s process uses them: its own broker user in every URL."""
    from aios.policy.identity import broker_password, broker_user

    if settings.security.broker_users == "off":
        return settings
    user, password = broker_user(agent_id), broker_password(key)
    broker = settings.require_broker()
    if not is_redis_url(broker):  # replies come over RabbitMQ: an agent there holds no Redis address at all
        return settings.updated(broker_url=with_user(broker, user, password), redis_url=None)
    return settings.updated(broker_url=with_user(broker, user, password),
                            redis_url=with_user(settings.state_redis_url(), user, password))


def redis_agent_rules(settings: Settings, agent_id: str, max_priority: int) -> list[str]:
    """The ``ACL SETUSER`` rules of an agent (after its name), password excluded."""
    lanes = [f"%W~{step_list(q, MAX_PRIORITY - p)}" for q in all_queues(settings) for p in range(max_priority + 1)]
    depth = "(" + " ".join(f"%R~{q}*" for q in all_queues(settings)) + " +llen)"
    return ["resetkeys", "resetchannels", "-@all", *AGENT_COMMANDS, *lanes, f"%RW~{keys.reply_pattern(agent_id)}",
            depth]


class BrokerUsers:
    """Make, remove and re-make agents' broker users (kernel side: runs with the kernel's own broker user)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.on = settings.security.broker_users == "on"

    # -- Redis --------------------------------------------------------------------------------------------

    def _redis_servers(self) -> list[redis.Redis]:
        """The Redis servers agents reach (the broker's, and the state's when it is another server)."""
        urls = []
        broker = self.settings.require_broker()
        if is_redis_url(broker):
            urls.append(broker_to_redis_py(broker))
        state = self.settings.state_redis_url() if (self.settings.broker.redis_url or is_redis_url(broker)) else None
        if state is not None and not any(_same_server(state, u) for u in urls):
            urls.append(state)
        return [redis.Redis.from_url(u, socket_timeout=10, socket_connect_timeout=10) for u in urls]

    def _servers(self) -> list[Any]:
        """:meth:`_redis_servers` for raw commands (redis-py types ``execute_command`` loosely)."""
        return list(self._redis_servers())

    def _redis_create(self, agent_id: str, password: str, max_priority: int) -> None:
        from aios.policy.identity import broker_user

        digest = hashlib.sha256(password.encode()).hexdigest()
        for client in self._servers():
            rules = redis_agent_rules(self.settings, agent_id, max_priority)
            try:
                while True:
                    try:
                        client.execute_command("ACL", "SETUSER", broker_user(agent_id), "reset", "on", f"#{digest}",
                                               *rules)
                        break
                    except redis.ResponseError as exc:
                        # A command this server does not know (CLIENT SETINFO is Redis 7.2+): grant the rest.
                        unknown = re.search(r"modifier '(\+[a-z|]+)': Unknown command", str(exc))
                        if unknown is None or unknown.group(1) not in rules:
                            raise
                        rules.remove(unknown.group(1))
            except redis.ResponseError as exc:
                raise ConfigError(
                    f"cannot make the broker user of agent {agent_id!r} on Redis: {exc}. Broker users need Redis 7 "
                    "or Valkey 8 (ACL selectors) and a kernel user allowed to run ACL; or set "
                    "AIOS_BROKER_USERS=off for trusted agents") from None
            finally:
                client.close()

    def _redis_revoke(self, agent_id: str) -> None:
        from aios.policy.identity import broker_user

        for client in self._servers():
            try:
                client.execute_command("ACL", "DELUSER", broker_user(agent_id))
                client.execute_command("CLIENT", "KILL", "USER", broker_user(agent_id))
            except redis.ResponseError:  # no such user, or no connection of it
                pass
            finally:
                client.close()

    # -- RabbitMQ -----------------------------------------------------------------------------------------

    def _rabbitmqctl(self, *args: str, check: bool = True) -> None:
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            raise ConfigError("cannot make RabbitMQ users: `rabbitmqctl` is not on this machine's PATH; run `aios agent "
                              "create` on the RabbitMQ host, or set AIOS_BROKER_USERS=off for trusted agents")
        done = subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise ConfigError(f"rabbitmqctl {args[0]} failed: {(done.stderr or done.stdout).strip()}")

    def _vhost(self) -> str:
        path = urlsplit(self.settings.require_broker()).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def _rabbit_create(self, agent_id: str, password: str) -> None:
        from aios.policy.identity import broker_user

        user = broker_user(agent_id)
        own = re.escape(reply_queue_name(agent_id))
        kernel = "|".join(re.escape(q) for q in all_queues(self.settings))
        self._rabbitmqctl("delete_user", user, check=False)
        self._rabbitmqctl("add_user", user, password)
        self._rabbitmqctl("set_permissions", "-p", self._vhost(), user, f"^{own}$", f"^({kernel})$", f"^{own}$")

        from aios.broker.reply_queues import reply_queue

        with KOMBU.Connection(self.settings.require_broker(), connect_timeout=10) as conn:  # the kernel's user
            reply_queue(agent_id)(conn.default_channel).declare()

    # -- both ---------------------------------------------------------------------------------------------

    def create(self, agent_id: str, password: str, max_priority: int = MAX_PRIORITY) -> None:
        if not self.on:
            return
        if is_redis_url(self.settings.require_broker()):
            self._redis_create(agent_id, password, max_priority)
        else:  # replies travel over RabbitMQ: the agent gets no Redis user
            self._rabbit_create(agent_id, password)

    def revoke(self, agent_id: str) -> None:
        if not self.on:
            return
        from aios.policy.identity import broker_user

        if is_redis_url(self.settings.require_broker()):
            self._redis_revoke(agent_id)
        else:
            self._rabbitmqctl("delete_user", broker_user(agent_id), check=False)

    def sync(self) -> int:
        """Make every agent's broker user again from its credential record (a restarted broker forgets them):
        the valid ones made, the revoked ones removed. Returns how many were made."""
        from aios.policy.identity import Credentials, broker_password

        if not self.on:
            return 0
        creds = Credentials(self.settings)
        made = 0
        try:
            for cred in creds.list():
                if cred.revoked:
                    self.revoke(cred.agent_id)
                    continue
                self.create(cred.agent_id, broker_password(creds.ring.key(cred)), cred.max_priority)
                made += 1
        finally:
            creds.redis.close()
        return made


def _same_server(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port, pa.path if pa.scheme == "unix" else "") == (
        pb.scheme, pb.hostname, pb.port, pb.path if pb.scheme == "unix" else "")
