"""`deit benchmark`: where a distilled training step spends its time, ours against a timm baseline, in one run.

Measured, each as images/s for ours and for the baseline in interleaved rounds (the ratio is the median over
rounds of the paired times, so a machine that slows down moves both alike):

- inference: our DeiT against timm's on the same weights (eval, inference mode);
- train step: forward, backward and AdamW; ours with the fused AdamW kernel, timm's model with timm's optimizer
  factory (optionally both compiled);
- distilled step, teacher online: the official loop (timm's distilled DeiT, the teacher's forward every step)
  against ours doing the same;
- distilled step, teacher cached: ours reading the teacher's outputs from a teacher cache, against the official
  loop;
- data pipeline alone: the DeiT training augmentation on JPEG bytes held in memory, ours (per-sample seeded)
  against timm's transform, through a DataLoader with the given workers;
- end to end, distilled: loader, augmentation, teacher and student step over the JPEGs, the official loop against
  ours as `deit train` runs it (the teacher cached; views per image, or with batch augmentation).

bf16 autocast on CUDA, fp32 on the CPU, unless `precision` says otherwise (bf16 on the CPU runs the GPU's
dtype paths where a test can: `deit benchmark --precision bf16`). Random inputs; JPEGs are random-content images
at ImageNet's typical size (500x375).
"""

from .pipeline import jpeg_dataset, view_transforms
from .run import PARTS, PRESETS, run_benchmark
from .steps import timm_twin
from .timing import save_record

__all__ = ["PARTS", "PRESETS", "jpeg_dataset", "run_benchmark", "save_record", "timm_twin", "view_transforms"]
