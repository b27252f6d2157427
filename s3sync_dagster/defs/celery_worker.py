"""The Celery app s3sync's workers serve: `celery -A s3sync_dagster.defs.celery_worker worker --pool solo`.

The config file is found as the CLI finds it ($S3SYNC_CONFIG, else ./s3sync.yaml); its `executor.celery`
names the broker. The task is dagster-celery's own: it rebuilds the run's job from the pointer the run
carries and executes the step it was sent, writing events to the run's instance. The pointer is this
package's either way: definitions.documents_job for `s3sync sync`'s runs, the code location's `defs`
(module s3sync_dagster.definitions) for runs the daemon launches; both read this same config file, so a
worker must be given the config the code location loads.
"""

from __future__ import annotations

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from s3sync_dagster.config import ConfigError, load_config
from s3sync_dagster.defs.executor import celery_settings, resolved_url

_celery = load_config().executor.celery
if _celery is None:
    raise ConfigError("the config has no executor.celery section: there is no broker for a worker to serve")

app = make_app(
    {
        "broker": resolved_url(_celery.broker, "executor.celery.broker"),
        "backend": resolved_url(_celery.backend or _celery.broker, "executor.celery.backend"),
        "config_source": celery_settings(_celery),
    }
)
execute_plan = create_task(app)
