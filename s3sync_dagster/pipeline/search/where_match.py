"""Whether one chunk's metadata passes a Chroma where clause, tested here as Chroma 1.5 tests it.

The lexical index holds no metadata, so under a filter its candidates are tested one by one; asking Chroma
for them (`get(ids=..., where=...)`) costs seconds at 100,000 chunks (33 s for 500 ids: it reads the filter
over the whole collection first), while their metadata read by id costs 30 ms. The rules below are Chroma's as
measured (test_readers.py compares them with Chroma's own answers, clause by clause):

- a missing key fails `$eq`, `$in`, `$contains`, `$gt`..., and passes `$ne`, `$nin`, `$not_contains`;
- a list value (`readers`) is matched only by `$contains` / `$not_contains` (an element of the same type);
  `$eq`/`$in` never match it and `$ne`/`$nin` always do;
- numbers compare as numbers (1 equals 1.0), a bool only with a bool; `$gt`... take numbers, never a bool;
- a string's `$contains` is not a substring test: it fails (metadata `$contains` is for lists).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_NEGATIONS = {"$ne": "$eq", "$nin": "$in", "$not_contains": "$contains"}


def matches(where: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """Whether metadata passes the where clause (one Chroma's `validate_where` takes)."""
    for key, condition in where.items():
        if key == "$and":
            if not all(matches(clause, metadata) for clause in condition):
                return False
        elif key == "$or":
            if not any(matches(clause, metadata) for clause in condition):
                return False
        elif not _field(metadata, key, condition):
            return False
    return True


def _field(metadata: Mapping[str, Any], key: str, condition: Any) -> bool:
    operations = condition if isinstance(condition, Mapping) else {"$eq": condition}
    present = key in metadata and metadata[key] is not None
    value = metadata.get(key)
    for operator, operand in operations.items():
        if operator in _NEGATIONS:
            passed = not (present and _positive(_NEGATIONS[operator], value, operand))
        else:
            passed = present and _positive(operator, value, operand)
        if not passed:
            return False
    return True


def _positive(operator: str, value: Any, operand: Any) -> bool:
    if operator == "$contains":
        return isinstance(value, list) and any(_same_typed(element, operand) for element in value)
    if isinstance(value, list):
        return False
    if operator == "$eq":
        return _equal(value, operand)
    if operator == "$in":
        return any(_equal(value, choice) for choice in operand)
    if not _number(value) or not _number(operand):
        return False
    return {
        "$gt": value > operand,
        "$gte": value >= operand,
        "$lt": value < operand,
        "$lte": value <= operand,
    }[operator]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(value: Any, operand: Any) -> bool:
    if isinstance(value, bool) or isinstance(operand, bool):
        return isinstance(value, bool) and isinstance(operand, bool) and value == operand
    if _number(value) and _number(operand):
        return bool(value == operand)
    return type(value) is type(operand) and bool(value == operand)


def _same_typed(element: Any, operand: Any) -> bool:
    return type(element) is type(operand) and bool(element == operand)
