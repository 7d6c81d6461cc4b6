"""`deit demo`: what distillation is for, measured in minutes on a laptop CPU: few labels, a CNN teacher, and
the unlabelled rest of the images.

For each count of labelled images per class (10, 100 and all 400 of the 4,000 training digits), a small CNN
teacher is trained on the labelled images; then the same small DeiT is trained on them alone (as many steps as
the distilled ones, the labelled images passed over more often), and distilled from the teacher on the labelled
plus the unlabelled images: hard distillation through the distillation token, and soft distillation with the
attention term. With all labels, the paper's soft distillation joins in: its Table 3. The report gives each model's
top-1 and training time, the curve of top-1 against labels, both heads of each distilled student, and where each
model looks.

Every model trains in a process of its own, side by side, one per core; the teacher of each label count runs once
over the students' views (a teacher cache) and its distilled students read it; the digits are augmented a batch
at a time (`--batch-aug`). The seed is fixed: the same seed gives the same tables.
"""

from .study import run_demo

__all__ = ["run_demo"]
