"""The Celery application of a scale-out deployment: what API replicas send and workers take.

One queue per engine (`engine_queue`), so a worker takes only jobs for the engines it serves
(and keeps their models loaded). A message carries one `JobSpec` as JSON and nothing else:
inputs and results go through the artifact store, state through the job board, money through
the database.

Delivery is at least once: a message is acknowledged after its job ran
(`task_acks_late`), and one whose worker died goes back to its queue once it has been
unacknowledged for `visibility_timeout` (checked every `unacked_restore_interval`). Those are
short (seconds) because a job cannot run twice: a delivery runs it only when its claim in the
database succeeds (jobs/delivered.py).
"""

from __future__ import annotations

from celery import Celery

TASK = "localstability.run_job"
# Message priorities on Redis (0 first; kombu keeps one list per step) and the separator of
# a step's list name.
PRIORITY_STEPS = [0, 3, 6, 9]
PRIORITY_SEP = "\x06\x16"


def fair_priority(rank: int) -> int:
    """The priority of an organization's job that had `rank` of its jobs in flight before it:
    each organization's first job comes before any organization's second, and so on for
    three rounds; past that, first come, first served."""
    return PRIORITY_STEPS[min(rank, len(PRIORITY_STEPS) - 1)]


def queue_list(queue: str, priority: int) -> str:
    """The Redis list that holds a queue's messages of one priority step."""
    return f"{queue}{PRIORITY_SEP}{priority}" if priority else queue


def engine_queue(engine_id: str) -> str:
    """The queue of an engine's jobs."""
    return f"localstability.{engine_id}"


def celery_app(broker_url: str, visibility_timeout_s: float, restore_interval_s: float) -> Celery:
    app = Celery("localstability", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # results go to the artifact store, state to the board
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,  # a worker holds no job it is not running
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
            "visibility_timeout": max(1, int(visibility_timeout_s)),
            "unacked_restore_interval": max(1, int(restore_interval_s)),
            "unacked_restore_throttle": 1,
        },
    )
    return app
