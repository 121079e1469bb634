"""The local backend's order: round robin over organizations (each gets one job per turn,
first come first served within an organization), so one heavy user can't starve the rest;
and the batch that the job next in turn takes along. Plain functions of the queues: one
deque of queued jobs per organization, in the order of their turns."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

from localstability.jobs.base import Job

Queues = OrderedDict[str, deque[Job]]
T = TypeVar("T")


def _spend_turn(queues: Queues, org: str, job: Job) -> None:
    """`job` leaves its organization's queue, which goes last (or away, when empty)."""
    queue = queues[org]
    queue.remove(job)
    if queue:
        queues.move_to_end(org)
    else:
        del queues[org]


def next_ready(queues: Queues, ready: Callable[[Job], T | None]) -> tuple[Job, T] | None:
    """The first organization in turn with a job that `ready` answers (not None) gives its
    oldest such job, then goes last: the job and the answer. Jobs `ready` passes over (their
    pipeline is loading) keep their place."""
    for org, queue in list(queues.items()):
        for job in queue:
            answer = ready(job)
            if answer is not None:
                _spend_turn(queues, org, job)
                return job, answer
    return None


def room(batch: list[Job]) -> int:
    """How many more images the batch may take (0 for a job that runs alone)."""
    head = batch[0].spec.run
    if not head.batches:
        return 0
    return head.batch_max_images - sum(job.spec.run.images for job in batch)


def fill(queues: Queues, batch: list[Job], take: Callable[[Job], None]) -> None:
    """Add queued jobs that can share the batch's pipeline call (`take`), one per
    organization per turn (oldest first within an organization), while there is room."""
    head = batch[0].spec.run
    if not head.batches:
        return
    key = head.batch_key()
    added = True
    while added and room(batch) > 0:
        added = False
        for org in list(queues):
            job = next(
                (
                    j
                    for j in queues[org]
                    if j.spec.run.batches
                    and j.spec.run.batch_key() == key
                    and j.spec.run.images <= room(batch)
                ),
                None,
            )
            if job is None:
                continue
            _spend_turn(queues, org, job)
            take(job)
            added = True


def position(queues: Queues, job: Job) -> int | None:
    """How many jobs will start before this queued one (0: it is next), were every pipeline
    loaded."""
    queue = queues.get(job.organization_id)
    if queue is None or job not in queue:
        return None
    # Each turn takes one job from every organization in order: before this job start
    # its own `index` predecessors, and from every other organization `index` jobs, plus
    # one more from those whose turn comes first.
    index = queue.index(job)
    ahead, before_in_turn = index, True
    for org, other in queues.items():
        if org == job.organization_id:
            before_in_turn = False
            continue
        ahead += min(len(other), index + int(before_in_turn))
    return ahead
