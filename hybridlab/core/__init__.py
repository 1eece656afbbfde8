"""Stage 0, used by every other stage: paths, atomic writes, progress and cancellation, user errors.
Nothing here knows about models."""
