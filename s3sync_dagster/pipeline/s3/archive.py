"""Archived objects: the storage classes and Intelligent-Tiering tiers S3 answers a GET of only once restored, and
whether a HEAD says a restored copy is readable now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Read only after a RestoreObject: a GET answers InvalidObjectState. GLACIER_IR (Glacier Instant Retrieval) is read
# at once, in milliseconds, as STANDARD_IA is: not archived.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# INTELLIGENT_TIERING's opt-in archive tiers, which HEAD names in ArchiveStatus (its other tiers are read at once).
ARCHIVE_TIERS = frozenset({"ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"})


def archived_reason(head: Mapping[str, Any]) -> str | None:
    """Why a GET of the object HEAD described would be refused until it is restored ('in storage class GLACIER, not
    restored'), or None where it can be read: any other class, or a restored copy (`Restore: ongoing-request="false",
    expiry-date=...`, readable until its expiry)."""
    storage_class = str(head.get("StorageClass") or "STANDARD")
    tier = head.get("ArchiveStatus")
    if storage_class not in ARCHIVE_CLASSES and tier not in ARCHIVE_TIERS:
        return None
    restore = str(head.get("Restore") or "")
    if 'ongoing-request="false"' in restore:
        return None
    where = f"{storage_class} (tier {tier})" if tier else storage_class
    state = "its restore is in progress" if 'ongoing-request="true"' in restore else "not restored"
    return f"in storage class {where}, {state}"


def listed_as_archived(storage_class: str) -> bool:
    """Whether a listing's StorageClass may be an unrestored archive (a listing says nothing of restores, nor of
    Intelligent-Tiering's tier: HEAD tells, archived_reason)."""
    return storage_class in ARCHIVE_CLASSES


def may_be_archived(storage_class: str) -> bool:
    """Whether an object listed in this class may be unreadable until restored: an archive class, or
    INTELLIGENT_TIERING, whose archive tiers only a HEAD names."""
    return listed_as_archived(storage_class) or storage_class == "INTELLIGENT_TIERING"


def archived_message(object_key: str, reason: str, chunks_kept: int) -> str:
    """The report's message: what was not done, what stays, and what brings it in."""
    kept = f"its {chunks_kept} earlier chunk(s) kept" if chunks_kept else "nothing of it is indexed yet"
    return (
        f"object '{object_key}' is archived ({reason}): not read, {kept}; it is indexed once restored "
        "(RestoreObject; the restore-completed event, or the poll sensor's recheck of archived keys, syncs it)"
    )
