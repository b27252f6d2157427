"""An assumed role: the credentials a source's S3 and SQS clients sign with when it says `role_arn`, asked of STS
from the source's own credentials (or the default chain) and asked again before they expire, so a run or a
lingering reader that outlives one session goes on with the next.

Built on botocore's own pieces, as its `role_arn` profiles are: AssumeRoleCredentialFetcher asks STS, and
DeferredRefreshableCredentials refreshes (from 15 minutes before the expiry; at 10, every request waits for it).
The clients get them through a botocore session whose only credential provider hands them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from s3sync_dagster.pipeline.s3.objects import BucketError


class RoleRefused(BucketError):
    """STS would not let the source assume its role: the source's bucket cannot be used at all, said once (as a
    refused bucket is), naming the role, the source and what to check."""


@dataclass(frozen=True)
class Role:
    """What a source assumes: the role, the external id its trust policy asks for, the session's name and length."""

    arn: str
    source_name: str
    external_id: str | None = None
    session_name: str = "s3sync-dagster"
    duration_seconds: int = 3600

    def __repr__(self) -> str:  # the external id is a secret: never in a log or an error
        return f"Role({self.arn!r}, source {self.source_name!r})"


def assumed_role_credentials(base: Any, role: Role, sts_options: dict[str, Any]) -> Any:
    """Refreshable credentials of `role`, asked of STS with the credentials of the boto3 session `base`; STS is
    reached with `sts_options` (endpoint_url, region_name, config). Nothing is asked until a request needs them."""
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
    from botocore.exceptions import ClientError

    source_credentials = base.get_credentials()
    if source_credentials is None:
        raise RoleRefused(
            f"source '{role.source_name}': no credentials to assume the role {role.arn} with: give "
            "aws_access_key_id and aws_secret_access_key as {env: VAR}, or set up the default AWS credential chain"
        )
    extra: dict[str, Any] = {"RoleSessionName": role.session_name, "DurationSeconds": role.duration_seconds}
    if role.external_id is not None:
        extra["ExternalId"] = role.external_id

    def sts_client(service: str, **credentials: Any) -> Any:
        return base.client(service, **sts_options, **credentials)

    fetcher = AssumeRoleCredentialFetcher(sts_client, source_credentials, role.arn, extra_args=extra)

    def refresh() -> dict[str, Any]:
        try:
            return fetcher.fetch_credentials()  # type: ignore[no-any-return]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "an error")
            raise RoleRefused(
                f"source '{role.source_name}': STS refused to let it assume the role {role.arn} ({code}): the "
                "role's trust policy must name the source's credentials (and its external_id, when it asks for one), "
                "and they need sts:AssumeRole on it"
            ) from None

    return DeferredRefreshableCredentials(refresh_using=refresh, method="assume-role")


def session_with(credentials: Any, profile_name: str | None = None) -> Any:
    """A boto3 session whose clients sign with `credentials` (refreshable ones refresh themselves)."""
    import boto3
    import botocore.session
    from botocore.credentials import CredentialProvider, CredentialResolver

    class Given(CredentialProvider):  # type: ignore[misc]
        METHOD = "s3sync-assumed-role"

        def load(self) -> Any:
            return credentials

    core = botocore.session.Session(profile=profile_name)
    core.register_component("credential_provider", CredentialResolver(providers=[Given()]))
    return boto3.session.Session(botocore_session=core)
