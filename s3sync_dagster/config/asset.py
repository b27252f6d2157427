"""`asset:` on a source: its Dagster asset's description, tags, owners, kinds, automation condition and metadata,
checked by Dagster's rules at load so that an error names the source and the field."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from s3sync_dagster.config.secret_rules import StrictModel

# An asset's tags, owners and kinds by Dagster's rules (strict tags: letters, digits, `_`, `-`, `.`), checked at load
# so that the error names the source and the field. Dagster allows an asset ten kinds: s3 and chroma are the source's.
_TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}$")
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
_OWNER_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}$")
_KIND = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
_TEMPLATE = re.compile(r"^\s*\{\{.*\}\}\s*$", re.DOTALL)
SOURCE_KINDS = ("s3", "chroma")
_CONDITION_SCHEMA = {"type": "string", "description": '"{{ dg.AutomationCondition.on_missing() }}": a Dagster template'}


class AssetAttributes(StrictModel):
    """`asset:` on a source: its asset's attributes as Dagster names them (dagster-sling's and dagster-dbt's
    translators set the same), beside the source's own `group_name` and `asset_key_prefix`. docs/component.md."""

    description: str | None = Field(default=None, min_length=1)  # instead of the asset's own
    tags: dict[str, str | int | float | bool] = Field(default_factory=dict)
    owners: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list, max_length=10 - len(SOURCE_KINDS))  # beside s3 and chroma
    # A Dagster template that makes an AutomationCondition. A component's defs.yaml has it rendered by Dagster before
    # this model sees it (the object); s3sync.yaml keeps the text, rendered where the asset is made (defs/source.py).
    automation_condition: Annotated[Any, WithJsonSchema(_CONDITION_SCHEMA)] = None
    # Beside the asset's own (collection, bucket, path_prefix, chunking), which keep their values.
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _not_the_sources_own(cls, value: Any) -> Any:
        own = {"group_name": "group_name", "key_prefix": "asset_key_prefix", "asset_key_prefix": "asset_key_prefix"}
        for name in set(own) & set(value if isinstance(value, dict) else ()):
            raise ValueError(f"`{name}` is the source's own: write `{own[name]}:` beside `name:`, not under `asset:`")
        return value

    @field_validator("tags")
    @classmethod
    def _dagster_tags(cls, tags: dict[str, Any]) -> dict[str, Any]:
        for key, value in tags.items():
            if not _TAG_KEY.match(key) or key.startswith("dagster/"):
                raise ValueError(f"tag key '{key}': letters, digits, '_', '-', '.' (63 at most), one 'namespace/' "
                                 "before them at most, and not 'dagster/'")  # fmt: skip
            if not _TAG_VALUE.match(_tag_text(value)):
                raise ValueError(f"tag '{key}': its value must be letters, digits, '_', '-', '.' (63 at most)")
        return tags

    @field_validator("owners")
    @classmethod
    def _dagster_owners(cls, owners: list[str]) -> list[str]:
        for owner in owners:
            if not (owner.startswith("team:") and len(owner) > len("team:")) and not _OWNER_EMAIL.match(owner):
                raise ValueError(f"owner '{owner}': an email address, or a team written 'team:NAME'")
        return owners

    @field_validator("kinds")
    @classmethod
    def _dagster_kinds(cls, kinds: list[str]) -> list[str]:
        for kind in kinds:
            if not _KIND.match(kind):
                raise ValueError(f"kind '{kind}': letters, digits, '_', '-', '.' (63 at most)")
        return kinds

    @field_validator("automation_condition")
    @classmethod
    def _a_condition(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and _TEMPLATE.match(value)):
            return value
        if isinstance(value, str):
            raise ValueError(
                'write a Dagster template that makes the condition: "{{ dg.AutomationCondition.on_missing() }}" '
                "(or .eager(), .on_cron('0 3 * * *'), ...)"
            )
        from dagster import AutomationCondition  # rendered by Dagster: Dagster is loaded already

        if not isinstance(value, AutomationCondition):
            raise ValueError(f"the template made a {type(value).__name__}, not an AutomationCondition")
        return value

    def tag_values(self) -> dict[str, str]:
        """The tags as Dagster stores them: text (`true` for a flag)."""
        return {key: _tag_text(value) for key, value in self.tags.items()}


def _tag_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
