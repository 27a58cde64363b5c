"""Command-line overrides that Hydra cannot read, explained before Hydra's parser error.

Hydra's grammar takes only ASCII letters, digits and a few symbols in an unquoted value, so
``dataset.root=/data/Données`` stops with a bare ``LexerNoViableAltException``. The value works
quoted: ``'dataset.root="/data/Données"'`` (the outer single quotes keep the shell from removing the
inner double quotes)."""

from __future__ import annotations

from typing import Sequence


def quote_hint(argv: Sequence[str]) -> str | None:
    """A one-line hint for the first override with non-ASCII characters that Hydra cannot parse."""
    suspects = [a for a in argv if not a.startswith("-") and "=" in a and not a.isascii()]
    if not suspects:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in suspects:
        try:
            parser.parse_overrides([arg])
        except Exception:
            key, value = arg.split("=", 1)
            return (f"{arg}: the value has non-ASCII characters, which Hydra reads only inside quotes; "
                    f"write it as '{key}=\"{value}\"'")
    return None
