"""Shared by the tests of the Redis binding (a module, not conftest: tests/benchmarks has its own)."""

import os

import pytest


def require_redis_server() -> None:
    """Tests of the Redis binding need Debian's redis-server. In CI (CI=true, or
    STORAGEBENCH_REQUIRE_REDIS=1 as `.ci/run` sets; tox passes both through), where `.ci/run`
    installs it, a missing server fails the test; elsewhere it skips with the same reason."""
    from storagebench.stores import StoreError
    from storagebench.stores.redis_lastn import redis_server_binary

    try:
        redis_server_binary()
    except StoreError as e:
        required = (os.environ.get(v, "").lower() in ("1", "true", "yes")
                    for v in ("CI", "STORAGEBENCH_REQUIRE_REDIS"))
        if any(required):
            pytest.fail(f"CI must provide redis-server: {e}")
        pytest.skip(str(e))
