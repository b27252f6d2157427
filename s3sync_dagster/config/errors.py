"""The one error a configuration raises when its file is missing or breaks a rule."""

from __future__ import annotations


class ConfigError(ValueError):
    """The configuration file is missing or breaks a rule; the message names the field and source."""
