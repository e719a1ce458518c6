"""Griffe extension for the API reference: fence the `>>>` examples of docstrings.

The library's docstrings hold doctest examples (`tests/.../test_docstrings.py` runs them)
without Markdown fences; rendered as they are, each `>>>` line would become a nested
block quote. This wraps every doctest block (from a `>>>` line to the next blank line) in a
```pycon fence, for the rendering only: the source stays as it is.
"""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """`text` with every doctest block fenced as ```pycon."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith(">>>"):
            indent = lines[i][: len(lines[i]) - len(stripped)]
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest blocks of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
