"""The model a run trains: backbone -> head (built by factories.build_model)."""

from __future__ import annotations

import torch
from torch import nn

from ..heads import Head
from ..solver import autocast_off


class Classifier(nn.Module):
    """backbone -> head; the head sees the labels in training (the nearest-ETF head needs them)."""

    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x, y=None, *, features: bool = False):
        """Logits (B, K); with features, also the normalised features h (B, d) that some losses read.

        Under autocast only the backbone runs in low precision: every head normalises and classifies in at least
        float32, in training as in evaluation (learned and fixed_etf took bf16 logits, nearest_etf float32 ones)."""
        f = self.backbone(x)
        with autocast_off(f.device.type):
            h = self.head.normalize(f if f.dtype in (torch.float32, torch.float64) else f.float())
            logits = self.head.classify(h, y)
        return (logits, h) if features else logits
