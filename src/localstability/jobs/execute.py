"""Run one job from its plain data: what any worker process does with a `JobSpec`.

    python -m localstability.jobs.execute JOB.json [JOB.json ...] --store DIR [--config FILE]

reads each job (its JSON), takes its input images from the artifact store on disk at DIR,
runs it on this machine's device, and puts its results in the same store under the
generation's result prefix (`result_ttl_s` of the configuration). Nothing else of the process
that made the job is needed: no database, no queue, no server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localstability import errors
from localstability.config import load_settings
from localstability.inference.cache import PipelineCache
from localstability.inference.control import NO_CONTROL, StepControl
from localstability.inference.diffusion import GeneratedImage
from localstability.inference.tasks import Batch, run_tasks
from localstability.jobs.artifacts import (
    Artifact,
    ArtifactStore,
    DiskArtifactStore,
    put_result,
    result_prefix,
    to_artifacts,
)
from localstability.jobs.base import JobSpec


def read_inputs(spec: JobSpec, store: ArtifactStore) -> dict[str, bytes]:
    """The job's input images, from the artifact store."""
    found = {}
    for name, key in spec.inputs.items():
        data = store.get(key)
        if data is None:
            raise errors.ServerError(f"generation {spec.id}: its input {name} is gone")
        found[name] = data
    return found


def run_batch(
    specs: list[JobSpec],
    store: ArtifactStore,
    pipelines: PipelineCache,
    control: StepControl = NO_CONTROL,
) -> list[list[GeneratedImage]]:
    """Run the jobs (one, or several whose runs share a batch key) as one pipeline call: the
    images of each, in order."""
    batch = Batch([spec.run for spec in specs], [read_inputs(spec, store) for spec in specs])
    return run_tasks(pipelines, batch, control)


def execute(
    spec: JobSpec,
    store: ArtifactStore,
    pipelines: PipelineCache,
    control: StepControl = NO_CONTROL,
) -> list[Artifact]:
    """Run the job alone and return its artifacts (PNG-encoded)."""
    [images] = run_batch([spec], store, pipelines, control)
    return to_artifacts(images, control.check)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m localstability.jobs.execute")
    parser.add_argument("jobs", type=Path, nargs="+", help="each job's JSON (JobSpec.to_json)")
    parser.add_argument("--store", type=Path, required=True, help="the artifact store's folder")
    parser.add_argument("--config", type=Path, help="the deployment's TOML configuration")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    pipelines = PipelineCache.for_settings(settings)
    store = DiskArtifactStore(args.store)
    prefixes = []
    for path in args.jobs:
        spec = JobSpec.from_json(path.read_text())
        prefix = result_prefix(*spec.key)
        put_result(store, prefix, execute(spec, store, pipelines), settings.result_ttl_s)
        print(prefix, flush=True)
        prefixes.append(prefix)
    return prefixes


if __name__ == "__main__":
    main()
