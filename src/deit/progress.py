"""The progress bar every long step shows (training epochs, evaluation, the teacher cache, predict)."""

from __future__ import annotations


def progress(description: str, total: int, enabled: bool):
    """A rich progress bar with a free-text field (loss, img/s): (bar, task). A silent stand-in when disabled."""
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
        disable=not enabled,
        transient=False,
    )
    task = bar.add_task(description, total=total, info="")
    return bar, task
