"""Classifier heads: learned, fixed simplex ETF, nearest simplex ETF. Plain nn.Modules, no Hydra.

Every head maps backbone features f (B, d) to logits (B, K) through the same normalisation
h = tau f / ||f|| (switchable off), so comparisons between heads are fair: forward(f, y) = classify(normalize(f), y).
The trainer talks to all of them through ``forward(f, y)``, ``normalize``, ``classify``, ``weight``, ``after_step``
and ``pop_solver_stats``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from . import options as opt
from . import tags
from .errors import EtfTrainError
from .etf import canonical_stiefel, random_stiefel, simplex_etf
from .registry import Registry
from .solver import METHODS, autocast_off, centre, nearest_etf
from .sphere import sphere

HEADS = Registry("head")
register_head = HEADS.register


class Head(nn.Module):
    """Shared feature normalisation and the trainer-facing interface."""

    def __init__(self, num_classes: int, dim: int, tau: float = 5.0, normalize: bool = True):
        super().__init__()
        if num_classes < 2:
            raise EtfTrainError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.num_classes, self.dim = num_classes, dim
        self.tau = opt.number("head.tau", tau, above=0)
        self.normalize_features = opt.boolean("head.normalize", normalize)

    def normalize(self, f: torch.Tensor) -> torch.Tensor:
        """h = tau f / ||f|| (the sphere of radius tau; tau acts as the logit scale).  (B, d) -> (B, d)"""
        return sphere(f, self.tau) if self.normalize_features else f

    def classify(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of normalised features h (B, d) -> (B, K); y (training only) for heads that fit to the labels."""
        raise NotImplementedError

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.normalize(f), y)

    @property
    def weight(self) -> torch.Tensor:
        """The current classifier, (K, d)."""
        raise NotImplementedError

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias of the eval-mode logits h W^T + b, (K,); None without one (or one that depends on the batch)."""
        return None

    def after_step(self) -> None:
        """Called by the trainer after each optimiser step."""

    def pop_solver_stats(self) -> dict[str, float]:
        """Solver statistics gathered since the last call (only the nearest-ETF head has any)."""
        return {}


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


def _reference_point(dim: int, num_classes: int, basis: str, seed: int) -> torch.Tensor:
    basis = opt.choice("head.basis", basis, ("identity", "random"))
    seed = opt.integer("head.seed", seed, 0)
    if basis == "identity":
        if seed != 0:  # a head.seed sweep would otherwise give identical heads, pooled as replicates
            raise EtfTrainError(f"head.seed={seed} applies to head.basis=random only (the identity basis has no draw); "
                                "set head.basis=random, or sweep the run's seed=...")
        return canonical_stiefel(dim, num_classes)
    return random_stiefel(dim, num_classes, generator=torch.Generator().manual_seed(seed))


# The options each solver method reads, with their checks; null keeps the solver's default.
SOLVER_OPTIONS = {
    "riemannian": {"max_iters": lambda k, v: opt.integer(k, v, 1), "max_inner": lambda k, v: opt.integer(k, v, 1),
                   "grad_tol": lambda k, v: opt.number(k, v, above=0)},
    "newton": {"iters": lambda k, v: opt.integer(k, v, 1)},
}


def _solver_options(method: str, given: Mapping) -> dict:
    """head.solver's options for `method`, checked: max_iters=0 left the ETF at its reference point for a whole run
    (and the polar backward then differentiated a point that solves nothing)."""
    known = SOLVER_OPTIONS.get(method, {})
    for key, value in given.items():
        if key not in known and value is not None:
            raise EtfTrainError(f"head.solver.{key} does not apply to solver={method}; drop it")
    return {k: known[k](f"head.solver.{k}", v) for k, v in given.items() if v is not None}


def _check_etf_dims(name: str, num_classes: int, dim: int) -> None:
    if dim < num_classes:
        raise EtfTrainError(
            f"head={name} needs feature dimension d >= number of classes K, but the backbone gives d={dim} "
            f"and the dataset has K={num_classes}: choose a backbone with a wider feature layer (e.g. backbone.dim={num_classes})"
        )


@register_head("fixed_etf")
class FixedETFHead(Head):
    """A frozen simplex ETF W = sqrt(K/(K-1)) M P0^T on a fixed basis P0 (identity, or seeded random as in Yang et al. 2022).

    center="batch" adds the authors' bias b = -W mean_batch(h), computed from the batch at hand (training and
    evaluation alike, as their code does, so evaluation then depends on how the split is batched) with no gradient.
    """

    def __init__(self, num_classes, dim, tau=5.0, normalize=True, basis="identity", seed=0, center="none"):
        super().__init__(num_classes, dim, tau, normalize)
        _check_etf_dims("fixed_etf", num_classes, dim)
        self.center = opt.choice("head.center", center, ("none", "batch"))
        self.register_buffer("W", simplex_etf(_reference_point(dim, num_classes, basis, seed)))  # (K, d)

    @property
    def weight(self):
        return self.W

    def classify(self, h, y=None):
        W = self.W.to(h.dtype)
        logits = h @ W.T  # (B, K)
        return logits - W @ h.detach().mean(0) if self.center == "batch" else logits


@register_head("nearest_etf")
class NearestETFHead(Head):
    """The classifier is set, at every training step, to the simplex ETF nearest to the running class means.

    Per step (method.md): h = tau f/||f||; batch class means minus the batch mean mu_G; running means
    m_t = (1 - a_t) m_{t-1}.detach() + a_t batch_mean with a_t = max(2/(t+1), min_rate) (absent classes keep
    their value); H = m_t / ||m_t||_F; P = nearest_etf(H, P_prev); W = sqrt(K/(K-1)) M P^T; b = -W mu_G.
    Gradient reaches the backbone through h and, unless backward="none", through P(H).
    In eval mode the head uses the last P and the last training batch's mu_G, as the authors' model keeps W and b
    from its last training step (a running average of mu_G lagged the moving features: early eval accuracies read
    far below the trained head's, 55 % instead of 92 % after one 3-step digits epoch); a batch smaller than the
    largest seen (an epoch's leftover, possibly of one sample, whose mean is that sample: its classes' logits would
    all tie) moves it only by its share n / n_max, mu_eval <- mu_eval + (n / n_max) (mu_G - mu_eval).
    y: hard labels (B,), or soft labels Y (B, K) (a mixed batch): the class sums and counts are label-weighted,
    Y^T h and 1^T Y, so a class mean is the Y-weighted mean of the features (one_hot(y) gives the same bits as y).
    solver: {"method": svd | gram | riemannian | newton, **options of the method} (configs/solver/).
    """

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
        _check_etf_dims("nearest_etf", num_classes, dim)
        self.delta = opt.number("head.delta", delta, above=0)
        self.min_rate = opt.number("head.min_rate", min_rate, above=0, maximum=1)
        solver = dict(solver or {"method": "svd"})
        self.method = opt.choice("solver", solver.pop("method", "svd"), METHODS)
        self.backward = backward
        self.solver_opts = _solver_options(self.method, solver)
        self.register_buffer("P", _reference_point(dim, num_classes, basis, seed))  # (d, K)
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
            # at least float32 (bf16 features under autocast), never below the buffers' dtype (a float64 head)
            work = torch.promote_types(torch.promote_types(h.dtype, torch.float32), self.P.dtype)
            h32 = h if h.dtype == work else h.to(work)
            sums, counts = self._class_sums(h32, y)  # (K, d), (K,)
            total = counts.sum()
            mu_G = sums.sum(0) / total  # (d,) batch global mean
            # a_t = max(2/(t+1), min_rate) with t = step + 1, kept on the device (no host sync per step), in `work`
            a = (2.0 / (self.step.to(work) + 2)).clamp_min(self.min_rate)
            C, keep = _running_means_map(counts, total, a)
            means = torch.addmm(self.means.T * keep, C, sums)  # (K, d), the running means transposed
            H = (means / means.norm().clamp_min(1e-12)).T  # (d, K)
            start = _Timer(h.device)
            P, info = nearest_etf(
                H, self.P, self.delta, self.method, self.backward, check=not self._checked, return_info=True,
                **self.solver_opts,
            )
            self._checked = True  # the reference point is validated once; later P come from the solver
            self._stats.append((start.stop(), info))
            W = centre(P.T, math.sqrt(self.num_classes / (self.num_classes - 1)))  # (K, d), simplex_etf(P)
            logits = h32 @ W.T - W @ mu_G
        with torch.no_grad():
            self.means.copy_(means.T)
            self.P.copy_(P)
            self.global_count.copy_(torch.maximum(self.global_count, total))
            self.global_mean.add_((mu_G - self.global_mean) * (total / self.global_count))  # = mu_G for a full batch
            self.step += 1
        return logits

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
        if self.cuda:
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.begin = time.perf_counter()

    def stop(self) -> "_Timer":
        if self.cuda:
            self.end.record()
        else:
            self.end = time.perf_counter()
        return self

    def elapsed_ms(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.begin.elapsed_time(self.end)
        return 1e3 * (self.end - self.begin)


def create_head(name: str, num_classes: int, dim: int, **options) -> Head:
    """Build a head by its config name (``learned`` | ``fixed_etf`` | ``nearest_etf``); options are the keys of
    configs/head/<name>.yaml (and `solver`, the solver group, for heads that solve for their classifier)."""
    cls = HEADS.get(name)
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("num_classes", "dim")]
    unknown = sorted(set(options) - set(accepted))
    if "solver" in unknown:
        raise EtfTrainError(f"the solver group applies to head=nearest_etf only; head={name} has no solver: drop solver=...")
    if unknown:
        raise EtfTrainError(f"head {name}: unknown option(s) {', '.join(unknown)}; its options are: {', '.join(accepted)}")
    return cls(num_classes, dim, **options)


__all__ = ["HEADS", "FixedETFHead", "Head", "LearnedHead", "NearestETFHead", "create_head", "register_head"]
