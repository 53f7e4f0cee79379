"""Two agents, one file: a writer drafts, a reviewer edits and comments, the writer finishes; each as itself.

The writer is the agent ``aios run`` starts (``pair``); the reviewer is a second agent, ``<writer>-reviewer``, with
its own credential (``PEERS``) and its own syscalls: the kernel checks and audits each of them as the agent it is.
The draft is the writer's file ``drafts/<task>-<id>.md``. The reviewer may not touch it until the writer shares
that one file with it (``share_file(..., mode="write")``: a permission change, so it waits for an operator's
``aios approve`` where approvals are required); the reviewer then reads and writes it as ``owner=<writer>``,
and each of those accesses is in the audit log as allowed by the share. No other file of the writer's becomes
reachable. Every write is a compare-and-set on the version read, so the file's history is the collaboration:
version 1 the writer's draft, 2 the reviewer's edit with its comments, 3 the writer's final text. The reviewer
also keeps its review in its own files (``reviews/``).
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from aios import ApprovalDenied, Kernel
from aios_agents.common import Steps, json_step, peer, save_transcript, slug

PEERS = ("reviewer",)
"""The other agents this one works with: ``aios run`` issues ``<agent id>-reviewer`` a credential too."""
DRAFT_TOKENS = 128
REVIEW_SCHEMA = {
    "type": "object",
    "properties": {"comments": {"type": "string", "maxLength": 200}, "revised": {"type": "string", "maxLength": 500}},
    "required": ["comments", "revised"],
}
NOTES = "\n\n---\nReview by "  # where the reviewer's comments start in the shared file


def run(kernel: Kernel, task: str, *, verbose: bool = False) -> str:
    steps: Steps = []
    writer = kernel
    path = f"drafts/{slug(task)}-{uuid.uuid4().hex[:8]}.md"
    draft = writer.llm_chat([{"role": "system", "content": "Write a short first draft (a few sentences) for the task."},
                             {"role": "user", "content": task}], max_tokens=DRAFT_TOKENS).strip() or task
    version = writer.write_file(path, draft, if_version=0)["version"]
    steps.append({"kind": "draft", "agent": writer.agent_id, "path": path, "version": version})
    if verbose:
        print(f"  {writer.agent_id} drafted {path} (v{version}): {draft!r}")
    with peer(kernel, "reviewer") as reviewer:
        if not _share(writer, reviewer.agent_id, path, steps):
            save_transcript(writer, task, draft, steps, draft_file=path, reviewer=reviewer.agent_id)
            return draft
        edited = _review(reviewer, writer.agent_id, path, steps)
        if verbose:
            print(f"  {reviewer.agent_id} edited {path} (v{steps[-1]['version']}): {edited!r}")
    text, version = writer.read_file_versioned(path)
    final = writer.llm_chat(
        [{"role": "system", "content": "A reviewer edited your draft and left comments after '---'. Write the final "
                                       "text, without the comments."},
         {"role": "user", "content": f"Task: {task}\n\n{text}"}], max_tokens=DRAFT_TOKENS).strip()
    final = final or text.split(NOTES)[0]
    version = writer.write_file(path, final, if_version=version)["version"]
    steps.append({"kind": "final", "agent": writer.agent_id, "path": path, "version": version})
    if verbose:
        print(f"  {writer.agent_id} finished {path} (v{version})")
    save_transcript(writer, task, final, steps, draft_file=path, reviewer=reviewer.agent_id)
    return final


def _share(writer: Kernel, reviewer: str, path: str, steps: Steps) -> bool:
    """Give the reviewer write access to this one file; False if an operator denied it (or let it expire)."""
    pending = writer.submit(writer.storage_syscall("share", path, with_agent=reviewer, mode="write"))
    if writer.settings.security.approvals == "required":
        print(f"pair: sharing {path} with {reviewer} is a permission change: it waits for an operator's "
              f"`aios approve {pending.id}` (`aios approvals` shows it)", file=sys.stderr)
    try:
        writer.wait(pending)
    except ApprovalDenied as exc:
        steps.append({"kind": "share", "agent": writer.agent_id, "with": reviewer, "path": path, "error": str(exc)})
        return False
    steps.append({"kind": "share", "agent": writer.agent_id, "with": reviewer, "path": path, "mode": "write",
                  "syscall": pending.id})
    return True


def _review(reviewer: Kernel, owner: str, path: str, steps: Steps) -> str:
    """As the reviewer: read the writer's file, review it, write the edit back (compare-and-set), keep the review."""
    text, version = reviewer.read_file_versioned(path, owner=owner)
    review: dict[str, Any] | None = json_step(
        reviewer, [{"role": "system", "content": "You review a draft. Reply with JSON: short comments, and the "
                                                 "revised draft."},
                   {"role": "user", "content": text}], REVIEW_SCHEMA, steps, kind="review", max_tokens=384)
    comments = str(review["comments"]) if review else "no review could be read from the model"
    revised = (str(review["revised"]).strip() if review else "") or text
    edited = f"{revised}{NOTES}{reviewer.agent_id}: {comments}\n"
    new = reviewer.write_file(path, edited, owner=owner, if_version=version)["version"]
    steps.append({"kind": "edit", "agent": reviewer.agent_id, "path": path, "read_version": version, "version": new})
    reviewer.write_file(f"reviews/{owner}/{path.rsplit('/', 1)[-1]}.json",
                        json.dumps({"owner": owner, "path": path, "version": new, "comments": comments}))
    return edited
