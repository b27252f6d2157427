"""Deployments: Celery workers and daemon, a `chroma run` server, the production instance, Kubernetes on paper, the install walk, the wheel."""
