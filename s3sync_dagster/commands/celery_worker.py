"""The Celery app s3sync's workers serve: `celery -A s3sync_dagster.commands.celery_worker worker --pool solo`.

The sources are found as the `s3sync` command finds them: $S3SYNC_CONFIG, else ./s3sync.yaml, else the
S3ChromaSync component of the Dagster project around the working directory, with the project's `.env` loaded
as `dg` loads it. Their `executor.celery` names the broker. The task is dagster-celery's own: it rebuilds
the run's job from the pointer the run carries and executes the step it was sent, writing events to the
run's instance. The pointer is definitions.documents_job for `s3sync sync`'s runs (which reads the same
sources), the code location's for runs the daemon launches: a worker must run where both can be imported,
and be given the sources the code location loads.
"""

from __future__ import annotations

from s3sync_dagster.config import ConfigError, config_file, is_component, load_project_env
from s3sync_dagster.pipeline import extras

# dagster-celery, celery and redis are the [celery] extra: a worker started without them says which command adds them.
extras.require("celery", "a Celery worker (celery -A s3sync_dagster.commands.celery_worker)", ConfigError)

from dagster_celery.make_app import make_app  # noqa: E402
from dagster_celery.tasks import create_task  # noqa: E402

from s3sync_dagster.definitions import load_app_config  # noqa: E402
from s3sync_dagster.defs.executor import celery_settings, resolved_url  # noqa: E402

_where = config_file()
if is_component(_where):
    load_project_env(_where)
_celery = load_app_config(_where).executor.celery
if _celery is None:
    raise ConfigError(f"{_where} has no executor.celery section: there is no broker for a worker to serve")

app = make_app(
    {
        "broker": resolved_url(_celery.broker, "executor.celery.broker"),
        "backend": resolved_url(_celery.backend or _celery.broker, "executor.celery.backend"),
        "config_source": celery_settings(_celery),
    }
)
execute_plan = create_task(app)
