"""Bad samples: `SampleError` and the reasons (`SKIP_REASONS`) the pipeline counts skips under."""

from __future__ import annotations

# Reasons a sample can be skipped; the pipeline counts skips under these names.
SKIP_REASONS = (
    "missing_file",  # an image/video/record path that does not exist
    "bad_image",  # corrupt, truncated or undecodable image
    "empty_image",  # zero-size image or video frame
    "aspect_ratio",  # image or video aspect ratio beyond the processor's limit (200:1)
    "bad_video",  # undecodable video, inconsistent frame sizes, no decoder for the file type
    "placeholder_mismatch",  # number of <image>/<video> placeholders != number of images/videos
    "empty_conversation",  # no messages, or no assistant turn with content
    "bad_format",  # malformed record (bad JSON, unknown role, missing fields, remote URL)
    "too_long",  # more tokens than seq_len (never truncated)
    "too_many_patches",  # more vision patches than the batch vision buffer
    "too_many_visuals",  # more images/videos than grid rows in the batch vision buffer
    "processing_error",  # any other exception while turning the sample into tokens
)


class SampleError(Exception):
    """A bad sample. ``reason`` is one of ``SKIP_REASONS``; the message names what is wrong."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.detail = message
