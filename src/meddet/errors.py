"""meddet's one exception type for bad input.

Why one type: the command-line program catches exactly this and prints its message without a traceback,
while genuine bugs (any other exception) still surface with a traceback. Messages are written for a
radiographer: what is wrong, which file, and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class MeddetInputError(Exception):
    """Input that meddet cannot use, explained in plain words.

    ``problem`` says what is wrong, ``path`` names the file or folder, ``hint`` says what to do.
    """

    def __init__(self, problem: str, path: str | Path | None = None, hint: str | None = None) -> None:
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts = [self.problem]
        if self.path:
            parts.append(f"File: {self.path}")
        if self.hint:
            parts.append(f"What to do: {self.hint}")
        return "\n".join(parts)
