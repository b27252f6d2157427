"""A tiny line chunker, as an example of Python source in the demo bucket."""


def split_lines(text: str, max_lines: int = 10) -> list[str]:
    """Split text into pieces of at most max_lines lines, keeping every character."""
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i : i + max_lines]) for i in range(0, len(lines), max_lines)]


class Retry:
    """Retry a callable a fixed number of times with exponential backoff."""

    def __init__(self, attempts: int = 3, base_delay_s: float = 0.5) -> None:
        self.attempts = attempts
        self.base_delay_s = base_delay_s

    def delays(self) -> list[float]:
        return [self.base_delay_s * 2**attempt for attempt in range(self.attempts)]
