"""The nearest simplex ETF head (Markou, Ajanthan & Gould 2024): at every training step the classifier is the
simplex ETF nearest to the running class means, backpropagated through as a deep declarative node."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
import torch.distributed as dist

from .. import options as opt
from .. import tags
from ..errors import EtfTrainError
from ..etf import simplex_etf
from ..solver import METHODS, autocast_off, centre, nearest_etf
from .base import Head, check_etf_dims, reference_point, register_head

# The options each solver method reads, with their checks; null keeps the solver's default.
SOLVER_OPTIONS = {
    "riemannian": {
        "max_iters": lambda k, v: opt.integer(k, v, 1),
        "max_inner": lambda k, v: opt.integer(k, v, 1),
        "grad_tol": lambda k, v: opt.number(k, v, above=0),
    },
    "newton": {"iters": lambda k, v: opt.integer(k, v, 1)},
}


def _solver_options(method: str, given: Mapping) -> dict:
    """head.solver's options for `method`, checked (max_iters=0 would keep P at its reference point, and the polar
    backward would differentiate a point that solves nothing); an option the method does not read is refused."""
    known = SOLVER_OPTIONS.get(method, {})
    for key, value in given.items():
        if key not in known and value is not None:
            raise EtfTrainError(f"head.solver.{key} does not apply to solver={method}; drop it")
    return {k: known[k](f"head.solver.{k}", v) for k, v in given.items() if v is not None}


@register_head("nearest_etf")
class NearestETFHead(Head):
    """The classifier is set, at every training step, to the simplex ETF nearest to the running class means.

    Per step (method.md): h = tau f/||f||; batch class means minus the batch mean mu_G; running means
    m_t = (1 - a_t) m_{t-1}.detach() + a_t batch_mean with a_t = max(2/(t+1), min_rate) (absent classes keep
    their value); H = m_t / ||m_t||_F; P = nearest_etf(H, P_prev); W = sqrt(K/(K-1)) M P^T; b = -W mu_G.
    Gradient reaches the backbone through h and, unless backward="none", through P(H).
    In eval mode the head uses the last P and the last training batch's mu_G, as the authors' model keeps W and b
    from its last training step; a batch smaller than the largest seen (an epoch's leftover, whose mean is a few
    samples') moves that mu_G only by its share n / n_max: mu_eval <- mu_eval + (n / n_max) (mu_G - mu_eval).
    y: hard labels (B,), or soft labels Y (B, K) (a mixed batch): the class sums and counts are label-weighted,
    Y^T h and 1^T Y, so a class mean is the Y-weighted mean of the features (one_hot(y) gives the same bits as y).
    solver: {"name": svd | gram | riemannian | newton, **options of the method} (configs/solver/).
    """

    fixed_geometry = True  # a simplex ETF, solved for rather than learned by gradient
    batch_centred = True

    def __init__(
        self,
        num_classes,
        dim,
        tau=5.0,
        normalize=True,
        delta=1e-3,
        backward="polar",
        min_rate=1e-4,
        basis="identity",
        seed=0,
        solver: Mapping | None = None,
    ):
        super().__init__(num_classes, dim, tau, normalize)
        check_etf_dims("nearest_etf", num_classes, dim)
        self.delta = opt.number("head.delta", delta, above=0)
        self.min_rate = opt.number("head.min_rate", min_rate, above=0, maximum=1)
        solver = dict(solver or {"name": "svd"})
        self.method = opt.choice("solver", solver.pop("name", "svd"), METHODS)
        self.backward = backward
        self.solver_opts = _solver_options(self.method, solver)
        self.register_buffer("P", reference_point(dim, num_classes, basis, seed))  # (d, K)
        self.register_buffer("means", torch.zeros(dim, num_classes))  # (d, K) running centred class means
        self.register_buffer("global_mean", torch.zeros(dim))  # (d,) the last training batch's mu_G: eval-mode bias
        self.register_buffer("global_count", torch.zeros(()))  # () n_max, the most samples a training batch held
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._stats: list[tuple] = []
        self._checked = False

    @property
    def weight(self):
        return simplex_etf(self.P)

    @property
    def bias(self):
        return -self.weight @ self.global_mean

    def _class_sums(self, h, y):
        """Label-weighted per-class feature sums Y^T h and counts 1^T Y of the batch (Y = one_hot(y) for hard labels),
        summed over processes so every rank solves the same problem.  h: (B, d) -> (K, d), (K,)"""
        # one_hot(y) without F.one_hot's range check (a host sync); an out-of-range label still fails in the loss
        Y = (y.unsqueeze(1) == torch.arange(self.num_classes, device=y.device) if y.dim() == 1 else y).to(h.dtype)
        sums = Y.T @ h  # (K, d): on CPU ~5x faster, forward and backward, than the (d, K) product h^T Y
        counts = Y.sum(0)  # (K,)
        if dist.is_available() and dist.is_initialized():
            sums = _AllReduceSum.apply(sums)
            counts = counts.detach().clone()
            dist.all_reduce(counts)
        return sums, counts

    def classify(self, h, y=None):
        if not (self.training and y is not None):
            W = self.weight.to(h.dtype)
            return h @ W.T - W @ self.global_mean.to(h.dtype)
        with autocast_off(h.device.type):
            h = self._working_precision(h)
            sums, counts = self._class_sums(h, y)  # (K, d), (K,)
            total = counts.sum()
            mu_G = sums.sum(0) / total  # (d,) batch global mean
            means = self._running_means(sums, counts, total)  # (K, d)
            P, finite = self._solve(means)  # (d, K), () bool
            W = centre(P.T, math.sqrt(self.num_classes / (self.num_classes - 1)))  # (K, d), simplex_etf(P)
            logits = h @ W.T - W @ mu_G
        self._remember(means, P, mu_G, total, finite)
        return logits

    def _working_precision(self, h):
        """h in at least float32 (bf16 features under autocast), never below the buffers' dtype (a float64 head)."""
        work = torch.promote_types(torch.promote_types(h.dtype, torch.float32), self.P.dtype)
        return h if h.dtype == work else h.to(work)

    def _running_means(self, sums, counts, total):
        """The running class means after this batch, with a_t computed on the device (no host sync per step).
        (K, d) sums, (K,) counts, () total -> (K, d), the running means transposed"""
        a = (2.0 / (self.step.to(sums.dtype) + 2)).clamp_min(self.min_rate)  # a_t with t = step + 1
        C, keep = _running_means_map(counts, total, a)
        return torch.addmm(self.means.T * keep, C, sums)

    def _solve(self, means):
        """P: the Stiefel point of the simplex ETF nearest to H = m / ||m||_F, from the previous P, and whether H and P
        are finite; timed for solver/ms.  (K, d) -> (d, K), () bool"""
        H = (means / means.norm().clamp_min(1e-12)).T  # (d, K)
        start = _Timer(means.device)
        P, info = nearest_etf(
            H,
            self.P,
            self.delta,
            self.method,
            self.backward,
            check=not self._checked,
            return_info=True,
            **self.solver_opts,
        )
        self._checked = True  # the reference point is validated once; later P come from the solver
        self._stats.append((start.stop(), info))
        return P, info.finite

    @torch.no_grad()
    def _remember(self, means, P, mu_G, total, finite):
        """What the next step and eval mode start from: the running means, P, and the batch mean mu_G for the
        eval-mode bias (weighted by the batch's share of the largest batch seen). A step whose solve is not finite
        leaves every buffer as it was, decided on the device; its loss is not finite either, and the trainer skips
        the step or stops (trainer.nonfinite)."""
        count = torch.maximum(self.global_count, total)
        new = {
            self.means: means.T,
            self.P: P,
            self.global_mean: self.global_mean + (mu_G - self.global_mean) * (total / count),  # mu_G for a full batch
            self.global_count: count,
            self.step: self.step + 1,
        }
        for buffer, value in new.items():
            buffer.copy_(torch.where(finite, value, buffer))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before global_count: 0, so the next batch sets the mean as it did then
        state_dict.setdefault(prefix + "global_count", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def pop_solver_stats(self):
        if not self._stats:
            return {}
        ms = [t.elapsed_ms() for t, _ in self._stats]
        out = {tags.SOLVER_MS: sum(ms) / len(ms)}
        infos = [i for _, i in self._stats if i.iters is not None]
        if infos:
            out[tags.SOLVER_ITERS] = sum(float(i.iters.float().mean()) for i in infos) / len(infos)
            out[tags.SOLVER_GRAD_NORM] = sum(float(i.grad_norm.float().mean()) for i in infos) / len(infos)
        self._stats.clear()
        return out


def _running_means_map(counts: torch.Tensor, total: torch.Tensor, a: torch.Tensor):
    """(C, keep) with which the running-means update of method.md (step 3) is one product, m^T <- keep m^T + C S:

        m_k <- (1 - a) m_k + a (S_k / c_k - mu_G) for classes with c_k > 0 (the others keep m_k),  mu_G = sum_k S_k / N
        =>  C = diag(p / c) - (p / N) 1^T,  keep = 1 - p,  p_k = a [c_k > 0]

    S: the batch's class sums (K, d).  counts c: (K,), total N = sum_k c_k: (), a: () -> C (K, K), keep (K, 1)
    """
    present = counts > 0
    p = a * present  # (K,)
    C = torch.diag(p / torch.where(present, counts, 1)) - (p / total).unsqueeze(1)  # absent classes: 0 / 1
    return C, (1 - p).unsqueeze(1)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is summed back, so every rank's loss reaches every rank's features."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _Timer:
    """Wall time of the solve; on CUDA an event pair, read lazily so the training step never waits for it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:  # on the stream of the tensors' device, whichever device is current
            self.stream = torch.cuda.current_stream(device)
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.begin.record(self.stream)
        else:
            self.begin = time.perf_counter()

    def stop(self) -> _Timer:
        if self.cuda:
            self.end.record(self.stream)
        else:
            self.end = time.perf_counter()
        return self

    def elapsed_ms(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.begin.elapsed_time(self.end)
        return 1e3 * (self.end - self.begin)
