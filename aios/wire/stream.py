"""Token streaming on the wire: the chunks an LLM worker sends before its reply, and how a caller reassembles them.

A syscall made with ``stream=True`` gets, on its own reply channel (the Redis list ``aios:reply:<agent>:<id>``
that only its agent may pop, or its agent's RabbitMQ reply queue with the syscall id as correlation id), any
number of **chunks** before the one authoritative **reply**. A chunk is ``{"off": <characters before it>, "text":
<text>}``, sealed like a reply but for ``<id>:s`` (:func:`chunk_purpose`), so a chunk is never taken for a reply
nor a reply for a chunk, and nobody but the kernel can make either.

The offset is the chunk's sequence number, in characters of the reply's text. A worker that resumes a preempted
generation (time slices) starts sending at the offset the text of the resumed tokens already covers, so a caller
that takes from each chunk only what lies past what it has (:class:`Assembler`) never repeats text, and a chunk
that went missing costs nothing: the reply carries the whole text, and the caller ends with what it lacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aios.wire.errors import AuthError
from aios.wire.seal import open_reply, seal_reply
from aios.wire.syscalls import Response

CHUNK_SUFFIX = ":s"


def chunk_purpose(syscall_id: str) -> str:
    """What a chunk's seal is bound to (a reply's is the bare syscall id)."""
    return syscall_id + CHUNK_SUFFIX


def seal_chunk(off: int, text: str, key: str | None, syscall_id: str) -> str:
    body = json.dumps({"off": off, "text": text}, separators=(",", ":"), ensure_ascii=False)
    return seal_reply(body, key, chunk_purpose(syscall_id)) if key else body


def _body(blob: str) -> str:
    return blob.split(".", 1)[1] if blob[:1] != "{" and "." in blob[:70] else blob


def is_chunk(blob: str) -> bool:
    """Whether a message on a reply channel is a chunk (its body starts ``{"off":``), not a reply."""
    return _body(blob).startswith('{"off":')


@dataclass
class Assembler:
    """A caller's view of one streamed syscall: :meth:`feed` each message of its reply channel; it returns the
    new text to hand on (``""`` for nothing new) and sets :attr:`response` when the reply came. Written once for
    the sync and the asyncio client: they differ only in how they wait for the next message."""

    syscall_id: str
    key: str | None
    """The agent's key (replies and chunks are sealed with it); ``None``: a kernel without identities."""
    text: str = ""
    """Everything handed on so far."""
    response: Response | None = None
    forged: AuthError | None = None
    """The last message not sealed by the kernel for this syscall (dropped)."""
    chunks: list[tuple[int, str]] = field(default_factory=list)
    """Every chunk as received (offset, text), for tests and diagnostics."""

    def feed(self, blob: str) -> str:
        if self.response is not None:
            return ""
        if is_chunk(blob):
            try:
                chunk = json.loads(open_reply(blob, self.key, chunk_purpose(self.syscall_id)))
            except AuthError as exc:
                self.forged = exc
                return ""
            off, text = int(chunk["off"]), str(chunk["text"])
            self.chunks.append((off, text))
            if off > len(self.text):  # a chunk before it is missing: the reply will bring the rest
                return ""
            new = text[len(self.text) - off:]
            self.text += new
            return new
        try:
            response = Response.model_validate_json(open_reply(blob, self.key, self.syscall_id))
        except AuthError as exc:
            self.forged = exc
            return ""
        self.response = response
        final = final_text(response)
        if final is None or not final.startswith(self.text):
            return ""
        rest = final[len(self.text):]
        self.text = final
        return rest


def final_text(response: Response) -> str | None:
    result: Any = response.result
    if isinstance(result, dict) and isinstance(result.get("content"), str):
        return str(result["content"])
    return None
