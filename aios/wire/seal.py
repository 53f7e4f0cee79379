"""What is signed on the wire: a syscall's canonical bytes and its HMAC, and the seal on a reply.

Pure functions of bytes and keys (hex); who holds which key is :mod:`aios.policy.identity`'s business."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from aios.wire.errors import AuthError

SIG_FIELD = "sig"


def canonical(payload: dict[str, Any]) -> bytes:
    """The bytes that are signed: the syscall without its signature, keys sorted, compact separators."""
    body = {k: v for k, v in payload.items() if k != SIG_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(payload: dict[str, Any], secret: str) -> str:
    return hmac.new(bytes.fromhex(secret), canonical(payload), hashlib.sha256).hexdigest()


def seal_reply(body: str, key: str, syscall_id: str) -> str:
    """A reply as pushed to its caller: ``<hmac>.<response JSON>``, bound to the syscall id."""
    mac = hmac.new(bytes.fromhex(key), f"aios-reply\0{syscall_id}\0".encode() + body.encode(), hashlib.sha256)
    return f"{mac.hexdigest()}.{body}"


def open_reply(blob: str, key: str | None, syscall_id: str) -> str:
    """The response JSON of a sealed reply, after checking its seal (``key=None``: an unsigned kernel, auth off).
    Raises :class:`AuthError` for a reply the kernel did not make for this syscall."""
    if key is None:
        return blob.split(".", 1)[1] if blob[:1] != "{" and "." in blob[:70] else blob
    mac, sep, body = blob.partition(".")
    if not sep or len(mac) != 64 or not hmac.compare_digest(seal_reply(body, key, syscall_id)[:64], mac):
        raise AuthError(f"a reply to syscall {syscall_id} is not sealed by the kernel with this agent's key: "
                        "refused (a forged reply, or a kernel with another master key)", code="forged_reply")
    return body
