"""User-facing errors.

Every problem a user can cause (a bad name, a malformed genotype file, an impossible option)
raises :class:`BnasError`. The command line turns it into one line on stderr and exit status 2;
library callers can catch it like any ``ValueError``.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class BnasError(ValueError):
    """A problem with the user's input, reported as one line."""


def unknown(kind: str, name: str, known: Iterable[str]) -> BnasError:
    """Build the error for an unknown ``name`` of ``kind``, naming the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return BnasError(f"unknown {kind} '{name}'{hint}")
