"""Recover with a teacher: knowledge distillation from a trained (usually the dense) network.

A run's `TrainConfig.teacher` names the weights of a teacher of the student's own
architecture (`"none"`: no teacher; else a file or folder `oneprune.starts.read_weights`
reads; a study passes the dense reference of the same seed). With `distill_weight` w > 0
every training step runs the teacher (eval mode, no gradients, on the same device-resident
batch, before the student: beside the student's live activations its forward pass cost a
quarter more on CPU, `bench/overhead.py`) and minimises

    loss = (1 - w) * CE(z_s, y) + w * T**2 * KL(softmax(z_t / T) || softmax(z_s / T))

(Hinton et al., 2015: the T**2 keeps the soft term's gradients on the scale of the hard
one's as T changes). With w = 0 the teacher is not even built: the run is exactly the run
without a teacher, so a study that searches w over [0, 1] can find that distillation
does not help.

    >>> import torch
    >>> student = torch.tensor([[2.0, 0.0]]); labels = torch.tensor([0])
    >>> float(distillation_loss(student, student, labels, weight=1.0, temperature=2.0))
    0.0
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from oneprune.starts import fit_weights

NO_TEACHER = "none"
DISTILL_SETTINGS = ("distill_weight", "distill_temperature")  # the `TrainConfig` fields


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, weight: float, temperature: float,
                      ) -> torch.Tensor:
    """(1 - w) * cross-entropy + w * T^2 * KL(teacher's softened distribution || the
    student's), both terms averaged over the batch (KL summed over classes)."""
    hard = F.cross_entropy(student_logits, labels)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * temperature ** 2 * soft


def frozen_teacher(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str,
                   ) -> nn.Module:
    """`model` holding the teacher's `weights` (checked tensor by tensor, `ValueError`
    naming the first that does not fit; `source` says where they came from), in eval mode
    with no parameter requiring a gradient: it never trains and its BatchNorm statistics
    never move."""
    fit_weights(model, weights, source)
    model.eval()
    model.requires_grad_(False)
    return model
