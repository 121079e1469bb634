"""Per-key rate limits: 429 rate_limited in the envelope with Retry-After."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from localstability import errors
from localstability.app import create_app
from localstability.config import Settings
from localstability.service.ratelimit import RateLimiter
from tests.test_accounts_engines import assert_envelope


def test_over_the_limit_is_429_with_retry_after_per_key(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        offline=True,
        log_json=False,
        rate_limit_requests=3,
        rate_limit_window_s=60,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        key = (tmp_path / "data" / "admin-key.txt").read_text().strip()
        other = app.state.context.accounts.create_user("other@example.com", 1).key
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(3):
            assert client.get("/v1/user/balance", headers=headers).status_code == 200
        refused = client.get("/v1/engines/list", headers=headers)
        body = assert_envelope(refused, 429, "rate_limited")
        assert "3 requests every 60 seconds" in body["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Another key has its own window; a request without a valid key is still a 401.
        other_headers = {"Authorization": f"Bearer {other}"}
        assert client.get("/v1/user/balance", headers=other_headers).status_code == 200
        assert_envelope(client.get("/v1/user/balance"), 401, "unauthorized")


def test_sliding_window() -> None:
    now = [100.0]
    limiter = RateLimiter(2, 10, clock=lambda: now[0])
    limiter.check(1)
    now[0] = 105
    limiter.check(1)
    with pytest.raises(errors.RateLimited) as refused:
        limiter.check(1)
    assert refused.value.headers == {"Retry-After": "5"}
    now[0] = 110.5  # the first hit has left the window
    limiter.check(1)
    unlimited = RateLimiter(0, 10)
    for _ in range(1000):
        unlimited.check(1)
