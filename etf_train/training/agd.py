"""Automatic Gradient Descent (Bernstein, Mingard, Huang, Azizan, Yue 2023, "Automatic Gradient Descent: Deep
Learning without Hyperparameters"): the optimiser the nearest-ETF authors' scripts train with (gain 10).

What a matrix is here: a tensor W of shape (d_out, d_in, *kernel) is a stack of P = prod(kernel) matrices
W[:, :, p] of shape (d_out, d_in), one per kernel position (P = 1 for a linear layer), with the scale
    s = sqrt(d_out / d_in) / sqrt(P).
A convolution adds P such products over shifted inputs; for uncorrelated shifts the 1/sqrt(P) keeps its output at
the norm sqrt(d_out / d_in) ||x|| of a dense layer. The paper derives AGD for dense layers; we apply its rule to
every kernel position's matrix, as in the authors' runs (method.md), and the init slices the same way, so
init and update agree on what a matrix is (orthogonalising the flattened (d_out, d_in P) matrix would not).

The UFM feature table (nn.Embedding, stored (N, d)) is taken in its stored layout, d_out = N, d_in = d, so
s = sqrt(N / d) and, for N >= d, the init gives the samples' feature vectors norm 1 on average (E^T E = (N/d) I_d).
Read as the linear map one-hot(i) -> f_i it would be transposed, s = sqrt(d / N). With the heads' feature
normalisation (head.normalize=true) both train the same up to one global factor c on the table: the loss does
not depend on c, the gradient scales by 1/c, so s ||g|| (hence eta) is unchanged and every update scales by c.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist

from .. import options as opt
from .. import tags
from ..errors import EtfTrainError

__all__ = ["AGD", "agd_scale", "orthogonal_init_"]


def agd_scale(shape: torch.Size) -> float:
    """s = sqrt(d_out / d_in) / sqrt(P) for a (d_out, d_in, *kernel) tensor, P = prod(kernel)."""
    return math.sqrt(shape[0] / shape[1]) / math.sqrt(math.prod(shape[2:]))


def _matrices(t: torch.Tensor) -> torch.Tensor:
    """(d_out, d_in, *kernel) -> (d_out, d_in, P): the kernel positions' matrices along the last axis."""
    return t.reshape(t.shape[0], t.shape[1], -1)


@torch.no_grad()
def orthogonal_init_(w: torch.Tensor) -> torch.Tensor:
    """W[:, :, p] <- s Q_p at every kernel position p, s = agd_scale(W.shape), Q_p a Haar-random semi-orthogonal
    (d_out, d_in) matrix: Q^T Q = I_{d_in} if d_out >= d_in, else Q Q^T = I_{d_out}; so every singular value of
    every slice is s. Draws from the global torch RNG (the run's seed)."""
    d_out, d_in, P = _matrices(w).shape
    tall = d_out >= d_in
    a = torch.randn(P, max(d_out, d_in), min(d_out, d_in), device=w.device, dtype=w.dtype)
    q, r = torch.linalg.qr(a)  # q: (P, max, min) with orthonormal columns
    # QR of a Gaussian is Haar only once R's diagonal is made positive (Mezzadri 2007).
    q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    q = q if tall else q.transpose(-2, -1)  # (P, d_out, d_in)
    w.copy_((agd_scale(w.shape) * q).permute(1, 2, 0).reshape(w.shape))
    return w


def _one_dim_error(names: list[str]) -> EtfTrainError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return EtfTrainError(
        f"optimizer=agd has no rule for 1-D parameters, and these are trainable: {shown}; "
        "remove them with backbone.bias=false and head.bias=false"
    )


class AGD(torch.optim.Optimizer):
    """Automatic Gradient Descent over the L weight tensors (dim >= 2) that require grad.

    With per-kernel-position gradient norms n_lp = ||g_l[:, :, p]||_F and s_l = agd_scale(W_l.shape):
        G = (1/L) sum_l s_l sum_p n_lp,    eta = log((1 + sqrt(1 + 4 G)) / 2)
        W_l[:, :, p] <- W_l[:, :, p] - gain (eta / L) s_l g_l[:, :, p] / n_lp      (nothing where n_lp = 0)
    For a dense layer (P = 1) this is the paper's rule. Parameters without a gradient take no step.

    params: parameters or param groups as in torch, or (name, parameter) pairs (names then appear in errors; the
        trainer passes them, as `takes_named_parameters` asks).
    gain: the step multiplier (the authors run 10). It is the param groups' "lr", so a scheduler scales it and
        the trainer's `lr` scalar shows it; the paper's AGD has no schedule (scheduler=none).
    depth: L in both formulas; default the number of AGD tensors. Fixing it gives models with and without a
        learned classifier (one tensor more) the same step scaling.

    Constructing it re-initialises every AGD tensor with `orthogonal_init_` (the paper's init; under torchrun the
    result is broadcast from rank 0, as DDP does at construction), so a checkpoint loaded afterwards wins.
    Tensors with dim < 2 that require grad are refused: AGD has no rule for them.

    last_eta: eta of the last step, a 0-dim tensor on the parameters' device (None before the first step);
    pop_eta() returns the mean eta since its last call (one host sync) and resets it. The optimiser state is only
    that running mean (so a mid-epoch resume reports the same epoch mean); there are no per-parameter buffers.
    """

    takes_named_parameters = True

    def __init__(self, params: Iterable, gain: float = 10.0, depth: int | None = None):
        params = list(params)
        self.names = None
        if params and isinstance(params[0], tuple):  # (name, parameter) pairs; torch < 2.6 optimisers take no names
            self.names, params = [n for n, _ in params], [p for _, p in params]
        super().__init__(params, {"lr": opt.number("optimizer.gain", gain, above=0)})
        trainable = [(name, p) for name, p in self._named() if p.requires_grad]
        vectors = [name for name, p in trainable if p.dim() < 2]
        if vectors:
            raise _one_dim_error(vectors)
        if not trainable:
            raise EtfTrainError("optimizer=agd got no trainable weight tensors")
        self.depth = len(trainable) if depth is None else opt.integer("optimizer.depth", depth)
        for _, p in trainable:
            orthogonal_init_(p)
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(p.data, src=0)
        self.last_eta: torch.Tensor | None = None
        self._coef: tuple[tuple, torch.Tensor] | None = None
        self._eta_sum: float | torch.Tensor = 0.0
        self._eta_count = 0

    def _named(self) -> list[tuple[str, torch.Tensor]]:
        """(name, parameter) over all groups; an unnamed parameter is called by its position and shape: #3 (64,)."""
        params = [p for group in self.param_groups for p in group["params"]]
        names = self.names or [f"#{i} {tuple(p.shape)}" for i, p in enumerate(params)]
        return list(zip(names, params))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = [(group["lr"], p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not stepped:
            return loss
        params = [p for _, p in stepped]
        grads = [_matrices(p.grad) for p in params]  # (d_out, d_in, P) each
        norms = [torch.linalg.vector_norm(g, dim=(0, 1)) for g in grads]  # (P,) per kernel position
        scales = [agd_scale(p.shape) for p in params]
        G = sum(s * n.sum() for s, n in zip(scales, norms)) / self.depth
        eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
        # gain (eta/L) s / n at every kernel position of every tensor at once; a zero gradient slice gets 0, not 0/0
        n = torch.cat(norms)  # (sum P,)
        coef = self._coefficients(tuple(gain * s / self.depth for (gain, _), s in zip(stepped, scales)), norms)
        factors = torch.where(n > 0, coef * eta / n, 0.0).split([len(m) for m in norms])  # (P,) each
        torch._foreach_sub_(params, [(g * f).reshape(p.shape) for g, f, p in zip(grads, factors, params)])
        self.last_eta = eta
        self._eta_sum = self._eta_sum + eta
        self._eta_count += 1
        return loss

    def _coefficients(self, per_tensor: tuple[float, ...], norms: list[torch.Tensor]) -> torch.Tensor:
        """gain s / L repeated over each tensor's kernel positions, (sum P,) on the device; copied there only when
        it changes (a scheduler's new gain), not at every step."""
        key = tuple((c, len(m)) for c, m in zip(per_tensor, norms))
        if self._coef is None or self._coef[0] != key:
            values = [c for c, P in key for _ in range(P)]
            self._coef = (key, torch.tensor(values, dtype=norms[0].dtype).to(norms[0].device))
        return self._coef[1]

    def pop_eta(self) -> float | None:
        """Mean eta over the steps since the last call (None if none); resets the running mean."""
        if not self._eta_count:
            return None
        mean = float(self._eta_sum) / self._eta_count
        self._eta_sum, self._eta_count = 0.0, 0
        return mean

    def record(self) -> dict:
        """The run record's `optimizer.effective_depth`: L as this model resolved it (depth=null counts its weight
        tensors), which the config alone does not say."""
        return {"effective_depth": self.depth}

    def epoch_scalars(self) -> dict[str, float]:
        """The mean step size since the last call as optim/agd_eta; ranks agree (they average gradients)."""
        eta = self.pop_eta()
        return {} if eta is None else {tags.AGD_ETA: eta}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "eta_running": (float(self._eta_sum), self._eta_count)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self._eta_sum, self._eta_count = state_dict.pop("eta_running", (0.0, 0))
        super().load_state_dict(state_dict)
