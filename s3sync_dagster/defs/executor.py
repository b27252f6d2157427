"""Where runs' steps execute: in the run's own process, or on Celery workers (`executor: {celery: ...}`).

One place for the Celery settings, read by both sides: the run, which sends its step to the broker through
dagster-celery's `celery_executor`, and the workers (s3sync_dagster/commands/celery_worker.py), which take it.
"""

from __future__ import annotations

from typing import Any, cast

import dagster as dg

from s3sync_dagster.config import AppConfig, CeleryConfig, EnvRef

# `celery -A s3sync_dagster.commands.celery_worker worker` serves the steps; the same config file tells it the broker.
WORKER_APP = "s3sync_dagster.commands.celery_worker"


# Celery's bounds for storing or reading a step's result again after a lost backend connection (exponential
# backoff with full jitter: each wait between 0 and the cap, 2.5 s on average once capped).
RESULT_RETRIES = 60
RESULT_RETRY_CAP_MS = 5000


def celery_settings(celery: CeleryConfig) -> dict[str, Any]:
    """Celery settings under dagster-celery's defaults: a step's message survives the worker that took it.

    dagster-celery acknowledges a task when a worker takes it (Celery's default): under Celery's default
    prefork pool the worker's main process acknowledges it as its child begins, so a worker killed in
    the middle of a step loses it and its run waits forever (test_celery.py fails so; seen here, the solo
    pool happened to keep the message until the step ended). Acknowledged late, the message stays with
    the broker until the step is done; Redis hands it to another worker after the visibility timeout (a
    whole worker lost) or at once when only the pool's child died.
    """
    from dagster_celery.config import DEFAULT_CONFIG

    return {
        **DEFAULT_CONFIG,  # among them one message at a time per worker (prefetch 1): a dead one holds back one step
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A step's result is stored again on a new connection when the backend's connection was lost, and read
        # again by the run the same way: a worker whose link was cut while it ended a step had Redis give up its
        # connection, its write of the result failed ("Broken pipe"), and the run whose step had succeeded ended
        # FAILURE (test_celery.py cuts a worker's link at that moment). Retried RESULT_RETRIES times, at most
        # RESULT_RETRY_CAP_MS apart (about 2.5 minutes in all): a backend gone longer fails the step, as before.
        "result_backend_always_retry": True,
        "result_backend_max_retries": RESULT_RETRIES,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": RESULT_RETRY_CAP_MS,
        "broker_transport_options": {
            **cast("dict[str, Any]", DEFAULT_CONFIG["broker_transport_options"]),
            "visibility_timeout": celery.visibility_timeout_s,
            # Workers look for such messages every 100 s by default (10 s, scanning every 10th time): scan
            # every time, a quarter of the timeout apart (at most 10 s), so a lost step is back soon after it.
            "unacked_restore_interval": max(1, min(10, celery.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
    }


def _source(value: str | EnvRef) -> str | dict[str, str]:
    # Dagster's StringSource: an {env: VAR} reaches the executor as the variable's name, resolved in the run.
    return {"env": value.env} if isinstance(value, EnvRef) else value


def resolved_url(value: str | EnvRef, what: str) -> str:
    return value.resolve(what) if isinstance(value, EnvRef) else value


def executor_for(config: AppConfig) -> dg.ExecutorDefinition:
    celery = config.executor.celery
    if celery is None:
        # A run is one step: running it in the run's own process saves a second process start and import
        # of everything (~3 s before the step, ~2.6 s after it; benchmarks, section 9). A step that dies
        # takes its run with it either way: run retries and the run-worker monitor handle that.
        return dg.in_process_executor
    # dagster-celery and redis are the [celery] extra: without them the config is refused as it loads, naming it
    # (config/deployment.py), so the code location fails to load before this.
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {
            "broker": _source(celery.broker),
            "backend": _source(celery.backend or celery.broker),
            "config_source": celery_settings(celery),
        },
        name="s3sync_celery",
    )
