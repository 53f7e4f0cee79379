"""The operator console (aios/gateway/console.py): its own credential, what its API shows, and the page itself in a
real headless Chromium approving a parked irreversible syscall."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aios import ApprovalDenied, NotFound
from aios.ops.embedded import LocalKernel
from aios.policy.approvals import Approvals
from aios.policy.identity import Credentials, console_token
from aios.state.connections import state_client
from aios_bench.attacks import Arena, all_attacks
from aios_bench.attacks.arena import open_arena
from tests.browser import Browser, chromium_path
from tests.conftest import BROKERS, IN_CI, authorized, make_broker_settings, run_aios
from tests.gateway_harness import serve

pytestmark = pytest.mark.integration

XSS_PATH = '<img src=x onerror="document.title=\'pwned\'">.txt'


@pytest.fixture(scope="module", params=BROKERS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[str, LocalKernel]]:
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"console-{request.param}"), request,
                                    approvals="required")
    with LocalKernel(settings, resources=["tool"]) as lk, \
            serve(lk.settings) as (url, _ctx):
        yield url, lk


def token(lk: LocalKernel, rotate: bool = False) -> str:
    r = state_client(lk.settings)
    try:
        return console_token(lk.settings, r, rotate=rotate)
    finally:
        r.close()


def call(url: str, path: str, bearer: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {bearer}"} if bearer else {})
    request = urllib.request.Request(url + path, json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def parked(lk: LocalKernel, agent: str, count: int = 1) -> list[Any]:
    deadline = time.monotonic() + 30
    while len(found := [r for r in Approvals(lk.settings).pending() if r.agent_id == agent]) < count:
        assert time.monotonic() < deadline, f"{agent}'s syscalls never reached the approval queue"
        time.sleep(0.05)
    return found


def need_chromium() -> str:
    """Chromium's path; skipped where it is missing, failed in CI (``.ci/run`` installs it)."""
    executable = chromium_path()
    if executable is None:
        if IN_CI:
            pytest.fail("Chromium is missing: .ci/run installs the Debian package chromium")
        pytest.skip("no Chromium here: apt-get install -y chromium")
    return executable


def test_only_the_console_token_opens_the_api(gateway: tuple[str, LocalKernel]) -> None:
    url, lk = gateway
    agent = f"nosy-{uuid.uuid4().hex[:6]}"
    agent_key = Credentials(lk.settings).create(agent, write_file=False).key
    good = token(lk)
    assert good.startswith("aios-console-") and good == token(lk)  # stable until rotated
    assert call(url, "/console/api/overview")[0] == 401
    assert call(url, "/console/api/overview", agent_key)[0] == 401  # an agent's key never opens it
    assert call(url, "/console/api/overview", "aios-console-" + "0" * 64)[0] == 401
    assert call(url, "/console/api/approvals/abcdefgh12/deny", agent_key, {})[0] == 401
    status, data = call(url, "/console/api/overview", good)
    assert status == 200 and agent in [c["agent_id"] for c in data["credentials"]]
    assert set(data) == {"now", "status", "credentials", "recent", "approvals", "audit"}
    assert "aios.tool" in data["status"]["queues"]
    # Rotating voids the old token at once.
    newer = token(lk, rotate=True)
    assert newer != good and call(url, "/console/api/overview", good)[0] == 401
    assert call(url, "/console/api/overview", newer)[0] == 200
    # The page holds no data: served to anyone, with a policy that runs only its own script.
    with urllib.request.urlopen(url + "/console", timeout=10) as r:
        assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert b"/console/static/console.js" in r.read()


def test_approving_needs_the_digest_that_was_shown(gateway: tuple[str, LocalKernel]) -> None:
    url, lk = gateway
    good = token(lk)
    with authorized(lk.settings, f"api-{uuid.uuid4().hex[:6]}", timeout_s=60) as k:
        k.call_tool("write_file", path="x.txt", content="x")
        pending = k.submit(k.tool_syscall("delete_file", {"path": "x.txt"}))
        [request] = parked(lk, k.agent_id)
        path = f"/console/api/approvals/{pending.id}/approve"
        assert call(url, path, good, {"digest": request.digest[:16]})[0] == 400  # the whole digest, not a prefix
        status, body = call(url, path, good, {"digest": "0" * 64})
        assert status == 409 and "digest" in body["error"]["message"]
        assert Approvals(lk.settings).get(pending.id).status == "pending"  # a wrong digest approves nothing
        status, body = call(url, f"/console/api/approvals/{pending.id}/deny", good, {"reason": "checked: no"})
        assert status == 200 and body["status"] == "denied"
        with pytest.raises(ApprovalDenied, match="checked: no"):
            k.wait(pending)
        assert k.call_tool("read_file", path="x.txt")["content"] == "x"
        assert call(url, path, good, {"digest": request.digest})[0] == 409  # decided already


def test_the_page_in_chromium_approves_a_parked_syscall(gateway: tuple[str, LocalKernel], tmp_path: Path) -> None:
    executable = need_chromium()
    url, lk = gateway
    with authorized(lk.settings, f"page-{uuid.uuid4().hex[:6]}", timeout_s=90) as k:
        k.call_tool("write_file", path="notes.txt", content="old notes")
        wanted = k.submit(k.tool_syscall("delete_file", {"path": "notes.txt"}))
        hostile = k.submit(k.tool_syscall("delete_file", {"path": XSS_PATH}))  # an agent writes what the page shows
        requests = {r.id: r for r in parked(lk, k.agent_id, 2)}
        browser = Browser(executable)
        try:
            browser.open(f"{url}/console#token={token(lk)}")
            row = f'document.querySelector(\'tr[data-approval="{wanted.id}"]\')'
            browser.wait_for(f"{row} && document.querySelector('tr[data-approval=\"{hostile.id}\"]')")
            shown = browser.evaluate(f"({{summary: {row}.querySelector('.summary').textContent, "
                                     f"digest: {row}.querySelector('.digest').textContent, "
                                     f"payload: JSON.parse({row}.querySelector('pre.payload').textContent)}})")
            assert shown["summary"] == requests[wanted.id].summary == 'tool delete_file: {"path": "notes.txt"}'
            assert shown["digest"] == requests[wanted.id].digest
            assert shown["payload"] == requests[wanted.id].payload
            # The hostile path is shown as text: no element made of it, no script run.
            hostile_text = browser.evaluate(
                f"document.querySelector('tr[data-approval=\"{hostile.id}\"] .summary').textContent")
            assert hostile_text == requests[hostile.id].summary and "<img src=x onerror=" in hostile_text
            assert browser.evaluate("document.querySelectorAll('img').length") == 0
            assert browser.evaluate("document.title") == "AIOS operator console"
            assert browser.evaluate("location.hash") == ""  # the token left the address bar
            assert k.call_tool("read_file", path="notes.txt")["content"] == "old notes"  # nothing ran yet
            before = browser.screenshot(tmp_path / "console-approval-queue.png")
            browser.evaluate(f"{row}.querySelector('button.approve').click()")
            assert k.wait(wanted) == {"path": "notes.txt", "deleted": True}
            browser.wait_for(f"!{row} && document.getElementById('message').textContent.startsWith('approved')")
            browser.evaluate(f"document.querySelector('tr[data-approval=\"{hostile.id}\"] button.deny').click()")
            with pytest.raises(ApprovalDenied):
                k.wait(hostile)
            browser.wait_for(f"!document.querySelector('tr[data-approval=\"{hostile.id}\"]')")
            browser.wait_for(f"document.querySelector('tr[data-syscall=\"{wanted.id}\"]')")  # in recent syscalls
            browser.wait_for(f"document.querySelector('tr[data-agent=\"{k.agent_id}\"]')")
            shot = browser.screenshot(tmp_path / "console.png")
        finally:
            browser.close()
        with pytest.raises(NotFound):
            k.call_tool("read_file", path="notes.txt")
    assert shot.stat().st_size > 10_000 and before.stat().st_size > 10_000
    print(f"\nconsole screenshots: {before} (two requests waiting), {shot} (after approve and deny)")


def test_a_bad_token_in_the_page_shows_the_login_form(gateway: tuple[str, LocalKernel]) -> None:
    executable = need_chromium()
    url, lk = gateway
    agent_key = Credentials(lk.settings).create(f"page-nosy-{uuid.uuid4().hex[:6]}", write_file=False).key
    browser = Browser(executable)
    try:
        browser.open(f"{url}/console#token={agent_key}")
        browser.wait_for("!document.getElementById('login').hidden")
        assert "refused" in browser.evaluate("document.getElementById('state').textContent")
        assert browser.evaluate("document.getElementById('main').hidden") is True
        assert browser.evaluate("sessionStorage.getItem('aios-console-token')") is None
    finally:
        browser.close()


def test_console_token_command(gateway: tuple[str, LocalKernel]) -> None:
    _, lk = gateway
    out = run_aios(lk, "console-token")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == token(lk)


# -- the attack suite's gateway attacks, against this kernel and gateway (the shared arena serves no gateway) --------

GATEWAY_ATTACKS = [a for a in all_attacks() if a.area == "gateway"]


@pytest.fixture(scope="module")
def arena(gateway: tuple[str, LocalKernel]) -> Iterator[Arena]:
    url, lk = gateway
    broker = "rabbitmq" if not lk.settings.require_broker().startswith("redis") else "redis"
    with open_arena(lk.settings, broker, kernel=lk) as a:
        a.extra["gateway"] = url
        yield a


@pytest.mark.parametrize("attack", GATEWAY_ATTACKS, ids=lambda a: a.name)
def test_gateway_attacks_are_refused(arena: Arena, attack: Any) -> None:
    outcome = attack.run(arena)
    assert outcome.refused, f"{attack.name} succeeded ({attack.claim}): {outcome.saw}"


def test_the_gateway_attacks_are_there() -> None:
    assert {a.name for a in GATEWAY_ATTACKS} == {
        "console-read-with-agent-key", "console-self-approval", "mcp-as-another-agent"}
