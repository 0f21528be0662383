"""A learned linear classifier (the ordinary head; with renorm and no bias, the authors' baseline)."""

from __future__ import annotations

import torch
from torch import nn

from .. import options as opt
from .base import Head, register_head


@register_head("learned")
class LearnedHead(Head):
    """An ordinary trainable linear classifier; ``renorm`` rescales rows to unit norm after every step (authors' baseline)."""

    def __init__(self, num_classes, dim, tau=5.0, normalize=True, bias=True, renorm=False):
        super().__init__(num_classes, dim, tau, normalize)
        self.linear = nn.Linear(dim, num_classes, bias=opt.boolean("head.bias", bias))
        self.renorm = opt.boolean("head.renorm", renorm)

    @property
    def weight(self):
        return self.linear.weight

    @property
    def bias(self):
        return self.linear.bias

    def classify(self, h, y=None):
        return self.linear(h)

    @torch.no_grad()
    def after_step(self):
        if self.renorm:
            self.linear.weight.div_(self.linear.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))
