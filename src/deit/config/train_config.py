"""`TrainConfig`: the sections together, what the user set explicitly, and a data set's defaults for the rest."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields

from ..models.metadata import show_value
from .sections import SECTIONS, AugConfig, DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run: RunConfig = field(default_factory=RunConfig)
    explicit: frozenset = frozenset()
    """Dotted names of the fields the user set (YAML or flags)."""

    def __post_init__(self):
        if self.data.unlabelled and self.data.labels_per_class is None:
            raise ValueError(
                "data.unlabelled needs data.labels_per_class (which images keep their labels); add --labels-per-class N"
            )
        if self.data.unlabelled and not self.distill.needs_teacher:
            raise ValueError(
                "data.unlabelled: images without labels teach only through a teacher; give --distillation-type "
                "hard or soft (with --teacher-path), or --attn-distillation-weight, or drop --unlabelled"
            )
        if self.data.unlabelled and self.aug.bce_loss:
            raise ValueError(
                "aug.bce_loss: images without labels have no class targets to binarise; drop --bce-loss or --unlabelled"
            )
        if self.aug.mixup_active and self.run.batch_size % 2:
            raise ValueError(
                f"run.batch_size={self.run.batch_size} is odd, but Mixup/CutMix pair each image with another in "
                f"the batch; use {self.run.batch_size + 1}, or turn them off with --mixup 0 --cutmix 0"
            )

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, values: dict, explicit: set[str] | frozenset = frozenset()) -> TrainConfig:
        """Build from nested {section: {field: value}}; unknown sections or fields raise ValueError."""
        unknown = set(values) - set(SECTIONS)
        if unknown:
            shown = sorted(map(show_value, unknown))
            raise ValueError(f"unknown config section(s) {', '.join(shown)}; sections are: {', '.join(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            given = values.get(name)
            given = {} if given is None else given
            if not isinstance(given, dict):
                raise ValueError(f"config section {name} must be a mapping of field: value, not {show_value(given)}")
            known = {f.name for f in fields(section_cls)}
            for key in given:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1)
                    hint = f" (did you mean {name}.{close[0]}?)" if close else ""
                    keys = ", ".join(sorted(known))
                    shown = key if isinstance(key, str) else show_value(key)
                    raise ValueError(f"unknown config key {name}.{shown}{hint}; keys of {name}: {keys}")
            sections[name] = section_cls(**given)
        return cls(**sections, explicit=frozenset(explicit))

    def with_defaults(self, defaults: dict[str, object]) -> TrainConfig:
        """A copy where each dotted field in `defaults` takes its value unless the user set that field."""
        values = self.to_dict()
        for dotted, value in defaults.items():
            if dotted not in self.explicit:
                section, key = dotted.split(".")
                values[section][key] = value
        return TrainConfig.from_dict(values, self.explicit)
