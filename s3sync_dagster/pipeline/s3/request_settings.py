"""What a source's S3 requests carry besides credentials (requester pays, an SSE-C customer key), added on its client
itself so that every call site sends them; and a refusal that names the setting that would have let it through."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

# The operations that read a requester-pays bucket (each takes RequestPayer), and those that read an SSE-C object.
REQUESTER_PAYS_OPERATIONS = ("ListObjectsV2", "HeadObject", "GetObject", "GetObjectTagging")
CUSTOMER_KEY_OPERATIONS = ("HeadObject", "GetObject")


@dataclass(frozen=True)
class RequestSettings:
    """A source's `request_payer` and `sse_customer_key` (the key's 32 bytes, from its variable: never shown)."""

    request_payer: str | None = None
    sse_customer_key: bytes | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.request_payer is not None or self.sse_customer_key is not None


def customer_key(encoded: str, what: str) -> bytes:
    """The AES-256 key a variable holds as base64 (botocore sends it base64-encoded, with its MD5, from the bytes).
    A value that is not the base64 of 32 bytes is refused, naming `what` (the source and field), never the value."""
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError(f"{what}: the variable must hold the base64 of a 256-bit (32-byte) AES key (value not shown)")
    return key


def refusal_hint(operation: str, status: int, code: str, settings: RequestSettings) -> str:
    """The setting to look at for S3's refusal of `operation` (HTTP `status`, error `code`), or ''."""
    if code == "InvalidObjectState":  # an archived object (pipeline/s3/archive.py): no setting helps
        return ""
    if status == 403 and settings.request_payer is None and operation in REQUESTER_PAYS_OPERATIONS:
        return "if the bucket is requester-pays, set request_payer: requester"
    if status == 400 and operation in CUSTOMER_KEY_OPERATIONS:
        if settings.sse_customer_key is None:
            return "if the object is encrypted with a customer key (SSE-C), set sse_customer_key: {env: VAR}"
        return "check sse_customer_key: S3 refuses a key other than the one the object was written with"
    return ""


def send_request_settings(s3: Any, settings: RequestSettings) -> Any:
    """Register on the client: RequestPayer and the SSE-C key added to each call's parameters (botocore's
    provide-client-params, before it computes the key's MD5), and a refusal's message extended with the setting's
    name (after-call, before botocore raises the error: the message the ClientError carries)."""
    if settings.request_payer is not None:
        payer = settings.request_payer

        def add_payer(params: dict[str, Any], **_: Any) -> None:
            params.setdefault("RequestPayer", payer)

        for operation in REQUESTER_PAYS_OPERATIONS:
            s3.meta.events.register(
                f"provide-client-params.s3.{operation}", add_payer, unique_id=f"s3sync-payer-{operation}"
            )
    if settings.sse_customer_key is not None:
        customer_key = settings.sse_customer_key

        def add_key(params: dict[str, Any], **_: Any) -> None:
            params.setdefault("SSECustomerAlgorithm", "AES256")
            params.setdefault("SSECustomerKey", customer_key)

        for operation in CUSTOMER_KEY_OPERATIONS:
            s3.meta.events.register(
                f"provide-client-params.s3.{operation}", add_key, unique_id=f"s3sync-ssec-{operation}"
            )

    def name_the_setting(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        error = parsed.get("Error")
        if not isinstance(error, dict):
            return
        hint = refusal_hint(model.name, int(http_response.status_code), str(error.get("Code", "")), settings)
        if hint:
            error["Message"] = f"{error.get('Message') or error.get('Code') or 'refused'}; {hint}"

    s3.meta.events.register("after-call.s3", name_the_setting, unique_id="s3sync-name-the-setting")
    return s3
