"""Clients of a Ray cluster's dashboard (Serve deploys, job submission) from any process.

A local Ray instance (Ray 2.60) enables token authentication by default and writes its token
to ``~/.ray/auth_token``. A process that did not start the instance (``conflictctl models
activate`` beside ``conflictctl serve-up``, the scheduler) must send that token, so the clients
here turn token auth on as ``ray.init`` does when it joins a running cluster: when
``RAY_AUTH_MODE`` is unset and a token exists. An explicit ``RAY_AUTH_MODE`` is respected.
"""

from __future__ import annotations

from typing import Any


def use_cluster_token() -> None:
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def serve_client(dashboard_url: str) -> Any:
    """:class:`ray.dashboard.modules.serve.sdk.ServeSubmissionClient` for ``dashboard_url``."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    use_cluster_token()
    return ServeSubmissionClient(dashboard_url)


def job_client(dashboard_url: str) -> Any:
    """:class:`ray.job_submission.JobSubmissionClient` for ``dashboard_url``."""
    from ray.job_submission import JobSubmissionClient

    use_cluster_token()
    return JobSubmissionClient(dashboard_url)
