"""The progress bar every long step shows (training epochs, evaluation, the teacher cache, predict)."""

from __future__ import annotations


class _Silent:
    """What a disabled bar is: nothing written at all (rich 13.7's disabled bar still wrote a newline on stop,
    which put a blank line before `deit predict --json`'s first row)."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, task: int, **fields) -> None:
        pass

    def advance(self, task: int, advance: float = 1) -> None:
        pass


def progress(description: str, total: int, enabled: bool):
    """A rich progress bar with a free-text field (loss, img/s): (bar, task). A silent stand-in when disabled."""
    if not enabled:
        return _Silent(), 0
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
    task = bar.add_task(description, total=total, info="")
    return bar, task
