"""Token streaming, pure parts: tokens -> safe text chunks (the worker's side), chunks + reply -> text (the
SDK's side), with time slices, stop strings, characters cut between tokens, duplicates, gaps and forgeries."""

from __future__ import annotations

import json

from aios.services.llm.stream import TextStream, safe_text
from aios.wire.seal import seal_reply
from aios.wire.stream import Assembler, seal_chunk
from aios.wire.syscalls import Response, Status, Timing

KEY = "cd" * 32
PIECES = [b"Hel", b"lo", b" w", b"\xc3", b"\xa9rld", b" STO", b"P", b" after"]
"""A fake vocabulary: token i is PIECES[i]; token 3 ends inside 'é', token 5-6 spell the stop string."""


def detok(tokens: list[int]) -> bytes:
    return b"".join(PIECES[t] for t in tokens)


def sent_by(stream_tokens: range, stops: list[str], resumed: int = 0) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    s = TextStream(detok, stops, lambda off, text: out.append((off, text)), resumed=list(range(resumed)))
    for i in stream_tokens:
        s.on_token(i, i)
    return out


def test_safe_text_holds_back_a_possible_stop_and_cuts_at_one() -> None:
    assert safe_text("Hello ST", [" STOP"]) == ("Hello", False)
    assert safe_text("Hello STOP more", [" STOP"]) == ("Hello", True)
    assert safe_text("Hello", []) == ("Hello", False)


def test_chunks_are_contiguous_whole_characters_ending_before_the_stop() -> None:
    chunks = sent_by(range(len(PIECES)), [" STOP"])
    text = "".join(t for _, t in chunks)
    assert text == "Hello wérld"
    pos = 0
    for off, t in chunks:  # each chunk starts where the one before ended: nothing lost, nothing repeated
        assert off == pos and t
        pos += len(t)
    assert all("\ufffd" not in t for _, t in chunks)


def test_a_resumed_slice_sends_exactly_what_the_one_before_had_not() -> None:
    """Slices of any length (a resumed generation restarts from its tokens) send together what one run sends."""
    whole = sent_by(range(len(PIECES)), [" STOP"])
    for cut in range(1, len(PIECES)):
        first = sent_by(range(cut), [" STOP"])
        second = sent_by(range(cut, len(PIECES)), [" STOP"], resumed=cut)
        assert first + second == whole, cut


def test_a_token_seen_twice_or_out_of_order_sends_nothing() -> None:
    out: list[tuple[int, str]] = []
    s = TextStream(detok, [], lambda off, text: out.append((off, text)))
    s.on_token(0, 0)
    s.on_token(0, 0)
    s.on_token(5, 5)
    assert out == [(0, "Hel")]


def response(sid: str, content: str) -> Response:
    return Response(id=sid, status=Status.OK, result={"content": content, "usage": {}},
                    timing=Timing(created_at=0, started_at=0, finished_at=0))


def sealed_reply(sid: str, content: str, key: str = KEY) -> str:
    return seal_reply(response(sid, content).model_dump_json(), key, sid)


def test_the_assembler_takes_each_character_once_and_ends_with_the_reply() -> None:
    a = Assembler("sid12345", KEY)
    got = [a.feed(seal_chunk(0, "Hel", KEY, "sid12345")), a.feed(seal_chunk(0, "Hello", KEY, "sid12345")),
           a.feed(seal_chunk(3, "lo", KEY, "sid12345")), a.feed(seal_chunk(9, "late", KEY, "sid12345")),
           a.feed(sealed_reply("sid12345", "Hello world"))]
    assert got == ["Hel", "lo", "", "", " world"]  # a repeat adds nothing; past a gap waits for the reply
    assert a.text == "Hello world" and a.response is not None
    assert a.feed(seal_chunk(11, "more", KEY, "sid12345")) == ""  # after the reply: nothing


def test_the_assembler_drops_forged_chunks_and_a_chunk_is_never_a_reply() -> None:
    a = Assembler("sid12345", KEY)
    assert a.feed(seal_chunk(0, "evil", "ef" * 32, "sid12345")) == ""  # sealed with another key
    assert a.feed(seal_chunk(0, "evil", KEY, "othersid")) == ""  # sealed for another syscall
    # A chunk's seal made into a reply's: the body is not a response, and the seal is bound to '<id>:s'.
    forged = seal_chunk(0, "x", KEY, "sid12345").split(".", 1)[0] + "." + response("sid12345", "evil").model_dump_json()
    assert a.feed(forged) == ""
    assert a.forged is not None and a.text == "" and a.response is None
    body = json.dumps({"off": 0, "text": "plain"})
    assert a.feed(body) == ""  # unsealed, to a caller that expects seals

