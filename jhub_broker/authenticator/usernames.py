"""Characters a user (or group) name from an identity provider must not carry.

A name is shown in pages, logs and the admin list: a control character (NUL, escape), a format character
(bidi overrides and isolates, zero-width joiners, the BOM) or a line/paragraph separator makes it look like
another name (``bob@egi.eu\\x00`` shows as ``bob@egi.eu``) or rewrites what is shown around it. Other spaces than
the plain one (no-break, thin, ideographic) look like it and are refused too.
"""
import unicodedata

_KINDS = {"Cc": "a control character", "Cf": "an invisible formatting (e.g. bidi) character",
          "Cs": "a lone surrogate", "Co": "a private-use character", "Cn": "an unassigned character",
          "Zl": "a line separator", "Zp": "a paragraph separator", "Zs": "a space other than the plain one"}


def unacceptable_character(name):
    """``(position, character, what it is)`` of the first character a name must not carry, or None."""
    for i, ch in enumerate(name):
        kind = unicodedata.category(ch)
        if kind in _KINDS and ch != " ":
            return i, ch, _KINDS[kind]
    return None
