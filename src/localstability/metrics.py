"""The process's Prometheus metrics (prometheus_client's default registry).

Each layer counts what it alone sees, once, in the process where it happens: the REST front
door its requests and error envelopes; the process that runs a job (the server on the local
backend, a `localstability worker` on the celery one) its queue wait, inference time, images
and model loads; billing the credits it charges and refunds. Counters are per process:
Prometheus sums them across the scrape targets (each server replica's `/metrics`, each
worker's own endpoint: docs/operations.md). The queue gauges are read from the database at
scrape time (`service.health`), so every replica reports the deployment's numbers.

Plain values in, no layer imported: any layer may call these.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "localstability"

# From a tenth of a second (the shapes engine on a GPU) to ten minutes (a queue behind SDXL).
SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
ERRORS = Counter(
    f"{PREFIX}_http_errors",
    "Error envelopes answered, by the envelope's name.",
    ["name"],
)
QUEUE_WAIT = Histogram(
    f"{PREFIX}_queue_wait_seconds",
    "From a generation's admission to the start of its pipeline call, by engine and task.",
    ["engine", "task"],
    buckets=SECONDS,
)
INFERENCE = Histogram(
    f"{PREFIX}_inference_seconds",
    "A generation's pipeline call (shared by the generations batched with it), by engine and task.",
    ["engine", "task"],
    buckets=SECONDS,
)
IMAGES = Counter(
    f"{PREFIX}_images_generated",
    "Images of succeeded generations, by engine and task.",
    ["engine", "task"],
)
CREDITS_CHARGED = Counter(
    f"{PREFIX}_credits_charged",
    "Credits charged for succeeded generations (1 credit = 1,000,000 micro-credits).",
)
CREDITS_REFUNDED = Counter(
    f"{PREFIX}_credits_refunded",
    "Credits given back for generations that failed or were cancelled.",
)
MODEL_LOAD = Histogram(
    f"{PREFIX}_model_load_seconds",
    "Loading an engine's weights onto its device (downloads included), by engine.",
    ["engine"],
    buckets=SECONDS,
)
PIPELINES_LOADED = Gauge(
    f"{PREFIX}_pipelines_loaded",
    "Pipelines (models) this process holds loaded (max_loaded_engines bounds it).",
)
PIPELINES_BYTES = Gauge(
    f"{PREFIX}_pipelines_loaded_bytes",
    "Bytes of the parameters and buffers of the pipelines this process holds (measured at "
    "each load; max_loaded_bytes bounds it).",
)
PIPELINE_UNLOADS = Counter(
    f"{PREFIX}_pipeline_unloads",
    "Pipelines unloaded to stay within the memory budget (least recently used), by engine.",
    ["engine"],
)
PROMPTS_FILTERED = Counter(
    f"{PREFIX}_prompts_filtered",
    "Requests whose prompts the prompt filter matched, by mode (warn: let through, block: "
    "refused with 400 invalid_prompts).",
    ["mode"],
)
IMAGES_FILTERED = Counter(
    f"{PREFIX}_images_filtered",
    "Generated images the output filter flagged and blurred, by classifier.",
    ["classifier"],
)
OUTPUT_FILTER = Histogram(
    f"{PREFIX}_output_filter_seconds",
    "The output filter's look at one run's images, by classifier.",
    ["classifier"],
    buckets=SECONDS,
)

MICRO = 1_000_000


def request_answered(method: str, route: str | None, status: int) -> None:
    # Paths that match no route share one label: a scanner must not grow the series.
    REQUESTS.labels(method, route or "(unmatched)", str(status)).inc()


def error_answered(name: str) -> None:
    ERRORS.labels(name).inc()


def generation_made(
    engine: str, task: str, queue_wait_s: float, inference_s: float, images: int
) -> None:
    """A generation succeeded (charged), in the process that ran it."""
    QUEUE_WAIT.labels(engine, task).observe(max(0.0, queue_wait_s))
    INFERENCE.labels(engine, task).observe(max(0.0, inference_s))
    IMAGES.labels(engine, task).inc(images)


def credits_moved(charged_micro: int, refunded_micro: int) -> None:
    if charged_micro > 0:
        CREDITS_CHARGED.inc(charged_micro / MICRO)
    if refunded_micro > 0:
        CREDITS_REFUNDED.inc(refunded_micro / MICRO)


def model_loaded(engine: str, seconds: float) -> None:
    MODEL_LOAD.labels(engine).observe(seconds)


def pipelines_held(count: int, size_bytes: int) -> None:
    PIPELINES_LOADED.set(count)
    PIPELINES_BYTES.set(size_bytes)


def pipeline_unloaded(engine: str) -> None:
    PIPELINE_UNLOADS.labels(engine).inc()


def prompt_filtered(mode: str) -> None:
    PROMPTS_FILTERED.labels(mode).inc()


def output_screened(classifier: str, seconds: float, flagged: int) -> None:
    OUTPUT_FILTER.labels(classifier).observe(seconds)
    if flagged:
        IMAGES_FILTERED.labels(classifier).inc(flagged)


class _Jobs(Collector):
    def __init__(self, jobs: dict[str, tuple[int, int]]) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            f"{PREFIX}_jobs_queued",
            "Generations waiting for their run, by engine (the deployment's, from the database).",
            labels=["engine"],
        )
        running = GaugeMetricFamily(
            f"{PREFIX}_jobs_running",
            "Generations running, by engine (the deployment's, from the database).",
            labels=["engine"],
        )
        for engine, (waiting, now) in sorted(self.jobs.items()):
            queued.add_metric([engine], waiting)
            running.add_metric([engine], now)
        yield queued
        yield running


def exposition(jobs: dict[str, tuple[int, int]] | None = None) -> tuple[bytes, str]:
    """The text format of this process's metrics (its memory and CPU included), with the
    deployment's queued and running generations per engine (`jobs`: engine -> (queued,
    running)) when given; and its content type."""
    text = generate_latest(REGISTRY)
    if jobs is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Jobs(jobs))
        text += generate_latest(registry)
    return text, CONTENT_TYPE_LATEST


def serve(port: int, host: str) -> None:
    """This process's metrics on a port of its own (a worker has no HTTP server), in a
    daemon thread."""
    start_http_server(port, addr=host)
