"""The generic equality-constrained deep declarative node gradient (Gould et al.), built densely: a cross-check
of the closed-form backward, not for training."""

from __future__ import annotations

import math

import torch

from ..etf import centring_matrix


def ddn_vjp(G, H, prev, P, delta):
    """dL/dH and dL/dprev by the equality-constrained deep declarative node (Gould et al., TPAMI 2021, Prop. 4.5).

    With y = vec(P), constraints h = {p_i^T p_j - delta_ij}_{i<=j} and lambda from lambda^T A_h = D_y f:
        Dy = Hs^{-1} A_h^T (A_h Hs^{-1} A_h^T)^{-1} A_h Hs^{-1} B - Hs^{-1} B   (C = D_x h = 0)
        Hs = D_yy f - sum_k lambda_k D_yy h_k,  B = D_xy f
    so v^T Dy = (t - r)^T B with r = Hs^{-1} v, t = Hs^{-1} A_h^T (A_h Hs^{-1} A_h^T)^{-1} A_h r.
    Everything is dense (m = dK unknowns, p = K(K+1)/2 constraints): for checking, not for training.
    Vectorisation is row-major: P[a, i] -> a K + i, so P -> P X is kron(I_d, X^T).
    All inputs (..., d, K) -> (dL/dH, dL/dprev), each (..., d, K)
    """
    lead = G.shape[:-2]
    d, K = G.shape[-2:]
    out_H, out_prev = [], []
    flat = lambda t: t.reshape(-1, d, K).double()  # noqa: E731
    M = centring_matrix(K, dtype=torch.float64, device=G.device)
    c = 2.0 / math.sqrt(K - 1)
    Id = torch.eye(d, dtype=torch.float64, device=G.device)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    for g, h, q, p in zip(flat(G), flat(H), flat(prev), flat(P)):
        Ah = torch.zeros(len(pairs), d, K, dtype=torch.float64, device=G.device)
        for row, (i, j) in enumerate(pairs):
            Ah[row, :, i] += p[:, j]
            Ah[row, :, j] += p[:, i]
        Ah = Ah.reshape(len(pairs), d * K)
        Dyf = (2.0 / (K - 1)) * p @ M - c * h @ M + delta * (p - q)  # Euclidean gradient, (d, K)
        lam = torch.linalg.lstsq(Ah.T, Dyf.reshape(-1, 1)).solution.squeeze(-1)
        Lam = torch.zeros(K, K, dtype=torch.float64, device=G.device)
        for (i, j), lam_ij in zip(pairs, lam):
            Lam[i, j] += lam_ij
            Lam[j, i] += lam_ij  # the diagonal gets 2 lambda_ii: D^2 (p_i^T p_i) = 2 I
        Hs = torch.kron(Id, (2.0 / (K - 1)) * M + delta * torch.eye(K, dtype=torch.float64, device=G.device) - Lam)
        r = torch.linalg.solve(Hs, g.reshape(-1))
        HinvAt = torch.linalg.solve(Hs, Ah.T)  # (m, p)
        t = HinvAt @ torch.linalg.solve(Ah @ HinvAt, Ah @ r)
        w = (t - r).reshape(d, K)
        # B = D_xy f: -c kron(I, M) for x = H and -delta I for x = prev (both symmetric maps).
        out_H.append(-c * w @ M)
        out_prev.append(-delta * w)
    shape = (*lead, d, K)
    return (torch.stack(out_H).reshape(shape).to(G.dtype), torch.stack(out_prev).reshape(shape).to(G.dtype))
