"""How the settings hold a secret: `{env: VAR_NAME}` (EnvRef), never its value; the patterns that tell a literal
one, and the base of every settings model, whose errors never echo what was written."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from s3sync_dagster.config.errors import ConfigError

# The rules on secrets are patterns, each written once: the model's validators, literal_secrets() (what `s3sync`
# and the component's load refuse first) and the JSON schema `dg check yaml` is given all use these strings.
ENV_VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_VAR_NAME = re.compile(ENV_VAR_NAME_PATTERN)
ENV_VAR_NAME_SCHEMA = {"type": "string", "pattern": ENV_VAR_NAME_PATTERN}
# Shapes of real credentials: refused wherever they appear as a literal in the file.
CREDENTIAL_SHAPE = "|".join(
    (
        r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
        r"\bck-[A-Za-z0-9]{20,}\b",  # Chroma Cloud API keys
        r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI API keys (embedding functions)
    )
)
_SECRET_HEADER_WORDS = ("auth", "token", "key", "secret", "password", "cookie")
# A key that names a secret (a header's, an embedding function's config's), in any case: written without inline
# flags, which JSON schema's patterns (ECMA 262) lack.
SECRET_NAME = "|".join("".join(f"[{c.upper()}{c}]" for c in word) for word in _SECRET_HEADER_WORDS)
# chromadb's own way to name a variable in a function's config: `api_key_env_var: OPENAI_API_KEY`.
ENV_VAR_KEY = r"_env_var$"
SECRET_CONFIG_KEY = rf"^(?!.*_env_var$).*({SECRET_NAME})"
# `user:password@` in a URL (`scheme://user:password@host`) or a host (`user:password@host`).
URL_CREDENTIALS = r"^[^:/?#]+://[^/?#]*@|^(?!.*://).*@"


def no_credentials_in_url(value: str | None) -> str | None:
    """A URL or host with `user:password@` would carry a secret into logs, run config and `sources`."""
    if value is not None and re.search(URL_CREDENTIALS, value):
        raise ValueError(
            "carries credentials (user:password@...), which are refused and not shown: give S3 credentials as "
            "aws_access_key_id / aws_secret_access_key {env: VAR}, Chroma's as headers {env: VAR}"
        )
    return value


class StrictModel(BaseModel):
    # Errors never echo what was written: a value in the wrong field is most often a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class EnvRef(StrictModel):
    """A secret written as `{env: VAR_NAME}`: the file holds the variable's name, never its value."""

    env: str

    @field_validator("env")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not ENV_VAR_NAME.match(value):
            # Not echoed: what stands here by mistake is most often the secret itself.
            raise ValueError("is not an environment variable name (letters, digits, _; the value is not shown)")
        return value

    def resolve(self, what: str) -> str:
        value = os.environ.get(self.env)
        if value is None:
            raise ConfigError(
                f"{what}: environment variable {self.env} is not set: set it where s3sync and Dagster run (the "
                "shell, the project's .env, the deployment's environment), or name another variable"
            )
        return value


def secret_must_be_env_ref(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError("a literal secret is refused: write it as {env: VAR_NAME}")
    return value
