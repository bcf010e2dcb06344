"""Typed errors of dsct: the app shows them as ``gr.Error``, the CLI as one line (exit 2)."""

from __future__ import annotations

__all__ = ["DSCTError", "ConfigError", "ImageError", "WeightsNotFound", "HubUnreachable", "ChecksumError", "Cancelled",
           "TimeLimitExceeded"]


class DSCTError(Exception):
    """Base of every error a user can cause or fix; the message is written for that user."""


class ConfigError(DSCTError, ValueError):
    """A setting is out of range; the message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class ImageError(DSCTError, ValueError):
    """An input image cannot be used (missing, empty, too small, unreadable)."""


class WeightsNotFound(DSCTError, FileNotFoundError):
    """A checkpoint is not on disk and cannot be downloaded (offline, or no network)."""


class HubUnreachable(WeightsNotFound):
    """A checkpoint had to be downloaded and the Hugging Face Hub gave no answer (no network, proxy, firewall)."""


class ChecksumError(DSCTError):
    """A checkpoint file does not have the sha256 the registry expects."""


class Cancelled(DSCTError):
    """Raised from a progress callback to stop sampling between two steps."""


class TimeLimitExceeded(DSCTError):
    """The run's deadline (a GPU time budget) came before any sample finished."""
