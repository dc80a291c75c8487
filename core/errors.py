"""Exceptions whose message is one plain sentence a surgeon can act on.

Pages catch :class:`UserFacingError` and show ``str(error)`` with ``st.error``;
the command line prints it on stderr and exits with status 2. Anything else is a
bug and is logged, never shown to the user as a traceback.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """Base class: the message is safe and useful to show as it is."""


class SettingError(UserFacingError, ValueError):
    """An environment setting of the tool holds a value it cannot use; the message names the setting."""


class UnreadableImageError(UserFacingError):
    """The upload is not an image this tool can read."""


class WrongModalityError(UserFacingError):
    """The upload is a readable image, but not a CT slice."""


class RoiError(UserFacingError):
    """The outline cannot be used (empty, too small, outside the image)."""


class NotCalibratedError(UserFacingError):
    """The image lacks the scale (mm/px) or the HU the model needs; the message says what to enter."""


class ModelOutputError(UserFacingError):
    """The network produced no usable probabilities (NaN or infinite)."""


class ModelNotInstalledError(UserFacingError):
    """No checkpoint exists at the configured path."""


class CheckpointError(UserFacingError):
    """A checkpoint exists but cannot be loaded safely."""


class CheckpointNotAllowedError(CheckpointError):
    """A checkpoint's sha256 is not on the installation's allow-list of approved models."""


class ManifestError(UserFacingError):
    """A cohort manifest has rows that cannot be used; the message lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "; ".join(problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"The manifest has {len(problems)} problem(s): {listed}{more}.")


class DataSourceError(UserFacingError):
    """A training run does not know, or is told two different things, about what its images are."""


class ControlRunError(UserFacingError):
    """A permuted-label control would be written where it could be mistaken for a model."""


class ResumeMismatchError(UserFacingError):
    """An output folder holds a run whose data, settings or code differ from this one's."""


class TrainingDivergedError(UserFacingError):
    """The training loss became NaN or infinite; the run stopped."""


class UploadRefusedError(UserFacingError):
    """An upload (folder, files or ZIP) is too large, holds too many files, or is unsafe to open."""


class OutlineImportError(UserFacingError):
    """An outline file (DICOM SEG, NIfTI, PNG mask) cannot be used on this image."""


class StoredArrayDamagedError(UserFacingError):
    """A saved case's stored image, outline or probabilities fail their checksum."""

    def __init__(self, case_id: int, kind: str) -> None:
        self.case_id, self.kind = case_id, kind
        super().__init__(
            f"Case #{case_id} cannot be opened: its stored {kind.replace('_', ' ')} is damaged (checksum mismatch). "
            "Other cases are not affected; restore this one from a backup (python -m core db restore) or delete it."
        )


# how memory running out reads in the libraries' messages: torch's CPU allocator ("can't allocate
# memory") raises a plain RuntimeError, CUDA's says "out of memory", and OpenVINO and ONNX Runtime
# pass on C++'s bad_alloc
_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory", "bad_alloc", "failed to allocate")
OUT_OF_MEMORY_SENTENCE = (
    "The server ran out of memory; try again in a moment, or ask its administrator for more memory."
)


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out, whatever its type (torch's OutOfMemoryError included)."""
    if isinstance(error, MemoryError):
        return True
    message = str(error).lower()
    return any(words in message for words in _OUT_OF_MEMORY)
