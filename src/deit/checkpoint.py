"""A training run's folder: its lock, config.yaml, log.jsonl and checkpoint.pth; resuming; outputs that must not
replace a run.

A run owns its folder while it writes there (`files.FolderLock`), and every file is written atomically
(`files.atomic_write`). Each epoch the log is written before the checkpoint, so a run killed between the two
resumes from the earlier checkpoint and writes that epoch's line again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from .files import FolderLock, atomic_write, write_text
from .messages import first_line

log = logging.getLogger("deit")

CHECKPOINT = "checkpoint.pth"
LOG = "log.jsonl"
CONFIG = "config.yaml"


class RunFolder:
    """The output folder of one `deit train` run: config.yaml, log.jsonl (one line per epoch), checkpoint.pth.

    `open` takes the lock and refuses a folder that holds another run: a fresh run needs a folder without a
    checkpoint; a resumed run writes into the folder of the checkpoint it resumes, or into a folder without a run
    of its own (a copy that continues from there, the original left untouched).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = FolderLock(self.path, "deit train", owns=(CHECKPOINT, LOG, CONFIG))
        self.lines: list[dict] = []

    def open(self, resume: Path | None) -> RunFolder:
        ours = self.path / CHECKPOINT
        if ours.exists() and resume is None:
            raise ValueError(
                f"{self.path} already holds a run ({CHECKPOINT}); --resume {self.path} to continue it, "
                "or pick another --output_dir"
            )
        if ours.exists() and not _same_file(ours, resume):
            raise ValueError(
                f"{self.path} holds another run than {resume}; to continue that run in its own folder "
                "leave out --output_dir, or give an --output_dir without a run"
            )
        self.lock.acquire()
        return self

    def close(self) -> None:
        self.lock.release()

    def start(self, config: dict, start_epoch: int, resumed_from: Path | None) -> None:
        """Write the resolved config; keep the log lines of the epochs before `start_epoch`, from this folder's log
        or, when continuing another folder's run here, from that one's."""
        import yaml

        source = resumed_from.parent / LOG if resumed_from is not None else self.path / LOG
        self.lines = [line for line in read_log(source) if line.get("epoch", -1) < start_epoch]
        write_text(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        self._write_log()

    def save_epoch(self, line: dict, state: dict) -> None:
        """The epoch's log line, then its checkpoint (see the module's docstring for why in this order)."""
        import torch

        self.lines = [old for old in self.lines if old.get("epoch") != line["epoch"]] + [line]
        self._write_log()
        atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def _write_log(self) -> None:
        write_text(self.path / LOG, "".join(json.dumps(line) + "\n" for line in self.lines))


def read_log(path: Path) -> list[dict]:
    """The epochs of a log.jsonl; a line cut short (a log of an older version killed mid-append) is left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict):
                lines.append(line)
    return lines


def _same_file(a: Path, b: Path | None) -> bool:
    try:
        return b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def resume_path(resume: str | None) -> Path | None:
    """The checkpoint file `--resume` names (a run folder means its checkpoint.pth)."""
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"nothing to resume: {path} does not exist")
    return path


def load_training_state(path: Path) -> dict:
    """A checkpoint written by `deit train`, checked: what a resume reads from it has the types it must have."""
    from .models.weights import WeightsError, torch_load

    try:
        state = torch_load(path)
    except WeightsError as e:
        raise ValueError(f"cannot resume from {path}: {e}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "config", "deit_config"} <= set(state):
        raise ValueError(
            f"{path} is not a checkpoint written by `deit train`; to start from its weights use --finetune"
        )
    for key in ("epoch", "num_updates"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            raise ValueError(f"{path} is damaged: its {key} is {state.get(key)!r}, not a count")
    for key in ("model", "optimizer", "config", "deit_config"):
        if not isinstance(state[key], dict):
            raise ValueError(f"{path} is damaged: its {key} is a {type(state[key]).__name__}, not a mapping")
    return state


def training_state(model, updates, epoch: int, config: dict, deit_config: dict) -> dict:
    """What checkpoint.pth holds after `epoch`: the weights, the optimizer and EMA, the step count, the run's
    config and the model's `deit_config` (what rebuilds it and prepares its inputs)."""
    from .distributed import unwrap

    return {
        "model": unwrap(model).state_dict(),
        "optimizer": updates.optimizer.state_dict(),
        "model_ema": updates.ema.module.state_dict() if updates.ema is not None else None,
        "epoch": epoch,
        "num_updates": updates.num_updates,
        "config": config,
        "deit_config": deit_config,
    }


def resume_training(path: Path, model, updates, deit_config: dict) -> int:
    """Load a checkpoint's weights, optimizer, EMA and step count into this run; returns the epoch to start at.
    Refuses a checkpoint of another model (its `deit_config` but for the data section differs)."""
    state = load_training_state(path)
    theirs = state["deit_config"]
    if {k: v for k, v in theirs.items() if k != "data"} != {k: v for k, v in deit_config.items() if k != "data"}:
        raise ValueError(
            f"{path} was written by a run of {theirs.get('model')} {theirs.get('hparams')}, but this run trains "
            f"{deit_config.get('model')} {deit_config.get('hparams')}; resume with the same model and data, or "
            "start from its weights with --finetune"
        )
    try:
        model.load_state_dict(state["model"])
        updates.optimizer.load_state_dict(state["optimizer"])
        if updates.ema is not None:
            ema = state["model_ema"] if state.get("model_ema") is not None else state["model"]
            updates.ema.module.load_state_dict(ema)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} does not fit this run ({first_line(e)}); "
            "resume with the run's own settings, or start from its weights with --finetune"
        ) from None
    updates.resume(state["num_updates"])
    log.info(f"resuming after epoch {state['epoch']} from {path}")
    return state["epoch"] + 1


def saved_config(resume: str) -> dict:
    """The configuration a checkpoint's run was started with (where it wrote and what it resumed left out: a
    resumed run writes into the folder it resumes)."""
    config = load_training_state(resume_path(resume))["config"]
    run = config.get("run")
    if isinstance(run, dict):
        config = {**config, "run": {k: v for k, v in run.items() if k not in ("output_dir", "resume")}}
    return config


def what_is_kept(folder: RunFolder | None, epoch: int) -> str:
    """What a run stopped during `epoch` leaves behind, and how to continue it."""
    if folder is None:
        return "nothing was saved (no --output_dir)"
    if not (folder.path / CHECKPOINT).exists():
        return f"no checkpoint was written in {folder.path} yet"
    return f"the checkpoint of epoch {epoch - 1} in {folder.path} is kept: --resume {folder.path} to continue"


def check_output(source: str | os.PathLike, output: str | os.PathLike, files: list[str] | None = None) -> None:
    """Refuse an output that would replace its own source or a run: `output` is a file, or the folder that
    receives `files` (e.g. model.safetensors and config.json)."""
    source, output = Path(source), Path(output)
    targets = [output / name for name in files] if files else [output]
    sources = [source] if source.is_file() else [p for p in source.iterdir() if p.is_file()] if source.is_dir() else []
    for target in targets:
        if any(_same_file(target, s) for s in sources):
            raise ValueError(f"{target} is the source being read ({source}); write the result to another path")
        if target.name == CHECKPOINT and target.exists():
            raise ValueError(f"{target} is a training run's checkpoint; write the result to another path")
    folder = output if files else output.parent
    if files and (folder / CHECKPOINT).exists():
        raise ValueError(f"{folder} holds a training run ({CHECKPOINT}); write the weights to another folder")
