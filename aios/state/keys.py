"""Every Redis key the kernel uses, in one place (and the names of the headers it puts on broker messages).

kombu's own per-priority list names for a queue are in :mod:`aios.broker.queues` (``step_list``,
``priority_lists``): they are kombu's naming, not the kernel's.
"""

PREFIX = "aios"
DEADLETTER = f"{PREFIX}:deadletter"
"""List of rejected messages, newest first (LPUSH), trimmed to ``AIOS_DEADLETTER_MAX`` entries and
``AIOS_DEADLETTER_MAX_BYTES`` bytes (``lua/deadletter.lua``)."""
DEADLETTER_BYTES = f"{PREFIX}:deadletter:bytes"
"""The total bytes of the entries in :data:`DEADLETTER` (kept by ``lua/deadletter.lua``)."""
STATS_REJECTED = f"{PREFIX}:stats:rejected"
"""Hash: rejection code -> count."""
STATS_DONE = f"{PREFIX}:stats:done"
"""Hash: ``<kind>:<status>`` -> count of answered syscalls."""
RECENT = f"{PREFIX}:recent"
"""List: the latest answered syscalls (JSON records, no payload), newest first, capped
(:data:`aios.state.replies.RECENT_KEPT`): the operator console's "recent syscalls"."""
CONSOLE_GEN = f"{PREFIX}:console:gen"
"""The generation of the operator console's token (``aios console-token --rotate`` bumps it, voiding the old one)."""
AGENTS = f"{PREFIX}:agents"
"""Set of agent ids that have (or had) a credential."""
SUPERVISOR_RESTARTS = f"{PREFIX}:supervisor:restarts"
"""Hash: ``<process>:restarts`` -> count, ``<process>:last_exit`` -> ``code 1`` or a signal's name (``SIGKILL``),
``<process>:last_exit_at`` -> unix time; per process of the ``aios up`` supervisor (``redis``, ``tool``, ``llm-<core>``,
``flower``...). Written by :mod:`aios.ops.supervisor`, reset when ``aios up`` starts; read by ``aios status``."""


def agent(agent_id: str) -> str:
    """Hash: the public part of an agent's credential (gen, created_at, expires_at, revoked, groups,
    max_priority); the key itself is derived from the kernel's master key and stored nowhere."""
    return f"{PREFIX}:agent:{agent_id}"


APPROVALS_PENDING = f"{PREFIX}:approvals"
"""Sorted set of syscall ids waiting for an operator, by deadline (the workers' expiry sweep reads the due ones)."""


def approval(syscall_id: str) -> str:
    """Hash: an approval request (status, the parked signed payload and its digest, summary, reason, note,
    deadline...)."""
    return f"{PREFIX}:approval:{syscall_id}"


def result(syscall_id: str) -> str:
    """The stored response of a finished syscall: the idempotency record."""
    return f"{PREFIX}:result:{syscall_id}"


def reply(agent_id: str, syscall_id: str) -> str:
    """A one-element list the caller BLPOPs for its sealed answer; under its agent's name, so that a broker ACL
    gives each agent its own replies and nobody else's (``aios:reply:<agent>:*``)."""
    return f"{PREFIX}:reply:{agent_id}:{syscall_id}"


def reply_pattern(agent_id: str) -> str:
    """The ACL key pattern of :func:`reply` for one agent."""
    return f"{PREFIX}:reply:{agent_id}:*"


def context(syscall_id: str) -> str:
    """The snapshot of a suspended LLM generation (a hash; see :mod:`aios.state.context`)."""
    return f"{PREFIX}:ctx:{syscall_id}"


def attempts(syscall_id: str) -> str:
    """How many times a syscall was requeued after a transient backend failure."""
    return f"{PREFIX}:attempts:{syscall_id}"


def claim(syscall_id: str) -> str:
    """The delivery that may start ``syscall_id`` now: its random token, a lease renewed while it runs
    (:mod:`aios.worker.claims`)."""
    return f"{PREFIX}:claim:{syscall_id}"


def started(syscall_id: str) -> str:
    """Set when a syscall of an at-most-once tool starts (``Tool.at_most_once``): a later copy finds it and is
    answered ``interrupted`` instead of running again. Lives as long as answers do (``AIOS_RESULT_TTL_S``)."""
    return f"{PREFIX}:started:{syscall_id}"


def cancel(syscall_id: str) -> str:
    """Hash: who cancelled ``syscall_id`` -> when: an agent id (a verified cancel syscall: heeded only by that
    agent's own syscall) or ``*`` (an operator: ``aios cancel``, Celery's ``revoke``). :mod:`aios.worker.cancels`."""
    return f"{PREFIX}:cancel:{syscall_id}"


CANCEL_ANY = "*"
"""The :func:`cancel` field of an operator's cancel (heeded by a syscall of any agent)."""


def delayed(queue: str) -> str:
    """Sorted set: syscall ids the kernel put off on ``queue``, by when they go back to it (:mod:`aios.worker.delayed`)."""
    return f"{PREFIX}:delayed:{queue}"


def delayed_messages(queue: str) -> str:
    """Hash: syscall id -> the delayed message (its signed payload and why it was put off), for :func:`delayed`."""
    return f"{PREFIX}:delayed-msg:{queue}"


# -- access control (aios/policy/access.py, aios/policy/audit.py) ---------------------------------------------------------

AUDIT = f"{PREFIX}:audit"
"""Stream: the append-only audit log of access decisions and policy changes (hash-chained, approximately capped)."""
AUDIT_CHAIN = f"{PREFIX}:audit:chain"
"""Hash: the audit log's chain state: ``n`` (entries appended), ``head`` (the last one's hash), ``trimmed``."""
GRANT_OWNERS = f"{PREFIX}:grant-owners"
"""Set of agent ids that have (or had) granted access, so ``aios grants`` lists them without a SCAN."""
GROUPS = f"{PREFIX}:groups"
"""Set of group names made with ``aios group add``."""


def grant(owner: str) -> str:
    """Hash: ``<grantee>:<resource>`` -> ``read`` | ``write``, the access ``owner`` gave other agents."""
    return f"{PREFIX}:grant:{owner}"


def group(name: str) -> str:
    """Set: the agents ``aios group add`` put in group ``name``."""
    return f"{PREFIX}:group:{name}"


def member_of(agent_id: str) -> str:
    """Set: the groups ``aios group add`` put ``agent_id`` in (the reverse of :func:`group`, for one-step checks)."""
    return f"{PREFIX}:member-of:{agent_id}"


# -- scheduling and quotas (aios/policy/scheduler.py, aios/policy/governor.py) --------------------------------------------

def attained(resource: str) -> str:
    """Sorted set: agent id by its attained service on ``resource`` (worker seconds)."""
    return f"{PREFIX}:sched:attained:{resource}"


def active(resource: str) -> str:
    """Sorted set: agent id by when it last submitted to ``resource`` (the ``fair`` policy's active agents)."""
    return f"{PREFIX}:sched:active:{resource}"


def agent_stats(resource: str) -> str:
    """Hash: ``<agent>:<field>`` -> number: syscalls, wait and service seconds per agent on ``resource``."""
    return f"{PREFIX}:sched:stats:{resource}"


def waits(resource: str) -> str:
    """List: the latest queue waits (seconds) on ``resource``, newest first, capped: for percentiles."""
    return f"{PREFIX}:sched:waits:{resource}"


QUOTA_SCOPES = f"{PREFIX}:quota:scopes"
"""Set of quota scopes that have been used, so status and metrics can list them."""
TOKENS_USED = f"{PREFIX}:quota:tokens-used"
"""Hash: agent id -> LLM tokens used in total (the ``token_budget`` account)."""


def quota(scope: str, part: str) -> str:
    """Per scope: ``req`` (sorted set: admitted syscall ids by time), ``tok`` (hash: id -> tokens), ``lease``
    (sorted set: running syscall ids by lease expiry)."""
    return f"{PREFIX}:quota:{{{scope}}}:{part}"


# -- LLM workers' affinity (aios/worker/affinity.py) ------------------------------------------------------------------

def llm_workers(queue: str) -> str:
    """Hash: the LLM workers of core queue ``queue``, worker id -> JSON (its own queue, last heartbeat, slots in
    use, its conversation cache's counters); a dead one stays a while, so its queue is drained."""
    return f"{PREFIX}:llm:workers:{queue}"


def llm_owner(queue: str, agent_id: str) -> str:
    """String with a TTL: the id of the LLM worker of ``queue`` whose conversation cache holds ``agent_id``'s
    context."""
    return f"{PREFIX}:llm:owner:{queue}:{agent_id}"


STATS_LLM = f"{PREFIX}:stats:llm"
"""Hash: the LLM workers' counters, fleet-wide: conversation cache hits, misses, prefill tokens evaluated and
saved, affinity hits, misses, hand-overs (``aios status``, ``aios metrics``)."""


# -- memory (aios/services/storage/memory.py) --------------------------------------------------------------------------

def memfast(agent_id: str) -> str:
    """Hash: the memory fast tier of ``agent_id``, memory key -> JSON text of the value."""
    return f"{PREFIX}:memfast:{agent_id}"


# -- message headers (aios/broker/publish.py sets them; lua/age.lua reads them) ------------------------------------------

HEADER_ENQUEUED = "aios_enqueued"
"""Unix time the syscall entered its queue (this time): the ager raises it one step per ``AIOS_AGING_S``."""
HEADER_PRIORITY = "aios_priority"
"""The kernel priority it was published at (the ager's base)."""
