"""Schema-driven fuzzing: schemathesis against a running server, on a fixed example budget.

Every operation of our /openapi.json (the v1 paths, our generation-by-id paths and the admin
API) is fuzzed with schemathesis's default checks but one: no 5xx, every answer's status,
content type, headers and body as documented (so every error in the `Error` envelope), invalid
input rejected, a method we don't serve answered 405 with the right Allow, auth enforced.
`positive_data_acceptance` is left out: input the schema allows may still be refused by rules
it cannot express (engine size rules, an unknown engine id, too few credits).

Invalid input runs through every phase (examples, coverage, fuzzing, stateful); valid input
really runs the tiny models, made cheap by tests/fuzz_hooks.py, so in CI it skips the coverage
phase (about a hundred valid generations: every sampler, style and preset). The budget:

    LOCALSTABILITY_FUZZ=ci    (default) 7 examples per operation and phase, about 1 min
    LOCALSTABILITY_FUZZ=full  100 examples, and the coverage phase for valid input too

Runs are deterministic (`--generation-deterministic`): the same cases each time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, REPO, Deployment, assert_no_server_errors, start_deployment

LEVELS = {"ci": 7, "full": 100}
LEVEL = os.environ.get("LOCALSTABILITY_FUZZ", "ci")
if LEVEL not in LEVELS:
    raise ValueError(f"LOCALSTABILITY_FUZZ must be one of {sorted(LEVELS)}, not {LEVEL!r}")
EXAMPLES = LEVELS[LEVEL]
ALL_PHASES = "examples,coverage,fuzzing,stateful"
VALID_PHASES = ALL_PHASES if LEVEL == "full" else "examples,fuzzing,stateful"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")

# name, operations (path regex), whose key, generation mode, phases. The admin API runs last:
# it may revoke keys and move credits.
RUNS = [
    ("v1-invalid", "^/v1/", "user", "negative", ALL_PHASES),
    ("v1-valid", "^/v1/", "user", "positive", VALID_PHASES),
    ("admin", "^/admin/", "admin", "all", ALL_PHASES),
]


@pytest.fixture(scope="module")
def fuzzed(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Deployment:
    """A server of its own on every tiny engine, billing and the admin API on, rate limits off
    (the fuzzer sends hundreds of requests a minute; the limits have their own tests)."""
    directory = tmp_path_factory.mktemp("fuzz")
    return start_deployment(
        tiny_dir,
        directory,
        "sqlite",
        request,
        all_engines=True,
        LOCALSTABILITY_RATE_LIMIT_REQUESTS="0",
    )


@pytest.fixture(scope="module")
def user_key(fuzzed: Deployment) -> str:
    return fuzzed.new_key("fuzz@example.com", credits=1_000_000.0)


@pytest.mark.parametrize(
    ("name", "paths", "who", "mode", "phases"), RUNS, ids=[run[0] for run in RUNS]
)
def test_schemathesis_finds_nothing(
    fuzzed: Deployment,
    user_key: str,
    tmp_path: Path,
    name: str,
    paths: str,
    who: str,
    mode: str,
    phases: str,
) -> None:
    key = user_key if who == "user" else ADMIN_KEY
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{fuzzed.server.base_url}/openapi.json",
        "--include-path-regex",
        paths,
        "--header",
        f"Authorization: Bearer {key}",
        "--mode",
        mode,
        "--phases",
        phases,
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",  # implies no example database
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--request-timeout",
        "300",
        "--max-response-time",
        "300",  # valid cases run the models on a loaded 2-core machine: no latency check
        "--workers",
        "1",
        "--no-color",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis {name} failed:\n{output[-12000:]}"
    assert "No issues found" in output or "passed" in output, output[-3000:]


def test_the_fuzzed_server_logged_no_error_and_its_books_add_up(fuzzed: Deployment) -> None:
    assert_no_server_errors(fuzzed.server)
    fuzzed.books().assert_settled()
