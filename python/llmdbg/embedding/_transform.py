"""Placing new points on a fixed t-SNE map (private; ``TSNE.transform``).

As openTSNE's ``prepare_partial`` + ``optimize``: each new point i gets conditional affinities
p_{j|i} over its nearest training points, starts at their P-weighted mean and descends the
gradient of KL(p_i. || q_i.) with the map fixed, q_ij = w_ij / Z_i over the training points:

    g_i = alpha sum_j p_{j|i} w_ij (y_i - y_j) - Z_i^-1 sum_j w_ij^2 (y_i - y_j),

with w = 1 / (1 + d^2). New points do not interact with each other. The repulsion sums over all
N training points come from potentials computed once on a grid (FIt-SNE's interpolation: the
map's charges 1 and y spread to Lagrange nodes, convolved with 1/(1+d^2) and its square by FFT),
then interpolated at each new position every iteration: O(N + grid) once, O(M) per iteration.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from . import _neighbors

_P = 3  # Lagrange nodes per interval and dimension
_MAX_INTERVALS = 400  # per side; wider maps get intervals wider than one unit


def _lagrange(t: np.ndarray) -> np.ndarray:
    """Weights (len(t), _P) of the _P nodes at (k + 1/2) / _P for local coordinates t in [0, 1]."""
    nodes = (np.arange(_P) + 0.5) / _P
    w = np.ones((len(t), _P))
    for k in range(_P):
        for m in range(_P):
            if m != k:
                w[:, k] *= (t - nodes[m]) / (nodes[k] - nodes[m])
    return w


class _Field:
    """Potentials of a fixed map on an interpolation grid covering it (plus a margin)."""

    def __init__(self, Y: np.ndarray) -> None:
        lo, hi = Y.min(axis=0), Y.max(axis=0)
        side = float((hi - lo).max())
        margin = max(2.0, 0.1 * side)
        self.side = side + 2 * margin
        self.centre = (lo + hi) / 2
        self.origin = self.centre - self.side / 2
        self.m = int(min(_MAX_INTERVALS, max(50, np.ceil(self.side))))
        self.h = self.side / self.m
        n_nodes = self.m * _P
        dh = self.h / _P
        ix, iy, wx, wy = self._locate(Y)
        charges = [np.ones(len(Y)), Y[:, 0] - self.centre[0], Y[:, 1] - self.centre[1]]
        grids = []
        flat_base = ix * _P * n_nodes + iy * _P
        for q in charges:
            g = np.zeros(n_nodes * n_nodes)
            for a in range(_P):
                for b in range(_P):
                    g += np.bincount(flat_base + a * n_nodes + b, weights=q * wx[:, a] * wy[:, b], minlength=g.size)
            grids.append(g.reshape(n_nodes, n_nodes))
        # Kernels at node offsets, embedded circulantly in a 2 n_nodes transform.
        L = 2 * n_nodes
        steps = np.arange(L)
        off = np.where(steps <= n_nodes, steps, steps - L) * dh
        d2 = off[:, None] ** 2 + off[None, :] ** 2
        k1 = 1.0 / (1.0 + d2)
        f1, f2 = np.fft.rfft2(k1), np.fft.rfft2(k1 * k1)

        def conv(g: np.ndarray, f: np.ndarray) -> np.ndarray:
            return np.fft.irfft2(np.fft.rfft2(g, s=(L, L)) * f, s=(L, L))[:n_nodes, :n_nodes]

        self.phi = conv(grids[0], f1)  # sum_j w
        self.psi = conv(grids[0], f2)  # sum_j w^2
        self.chix = conv(grids[1], f2)  # sum_j w^2 (y_j - centre)
        self.chiy = conv(grids[2], f2)
        self.n_nodes = n_nodes

    def _locate(self, Y: np.ndarray):
        u = (Y - self.origin) / self.h
        u = np.clip(u, 0.0, self.m - 1e-9)
        ib = np.minimum(u.astype(np.int64), self.m - 1)
        return ib[:, 0], ib[:, 1], _lagrange(u[:, 0] - ib[:, 0]), _lagrange(u[:, 1] - ib[:, 1])

    def clip(self, Y: np.ndarray) -> np.ndarray:
        """Positions kept inside the grid's box."""
        lo = self.origin + 1e-9 * self.side
        return np.clip(Y, lo, lo + self.side * (1 - 2e-9))

    def repulsion(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sum_j w_ij^2 (y_i - y_j) (M, 2), Z_i = sum_j w_ij (M,)) over the map's points."""
        ix, iy, wx, wy = self._locate(Y)
        vals = np.zeros((len(Y), 4))
        for a in range(_P):
            rows = ix * _P + a
            for b in range(_P):
                cols = iy * _P + b
                w = (wx[:, a] * wy[:, b])[:, None]
                vals += w * np.stack(
                    [self.phi[rows, cols], self.psi[rows, cols], self.chix[rows, cols], self.chiy[rows, cols]], axis=1
                )
        q = Y - self.centre
        rep = q * vals[:, 1:2] - vals[:, 2:4]
        return rep, np.maximum(vals[:, 0], 1e-300)


def place(
    reference: np.ndarray,
    embedding: np.ndarray,
    Q: np.ndarray,
    *,
    perplexity: float,
    n_iter: int,
    learning_rate: float,
    exaggeration: float,
    threads: int,
    max_grad_norm: float = 0.25,
    momentum: float = 0.8,
) -> np.ndarray:
    """Positions (M, 2) float64 of the rows Q (in the fitted input space) on the fixed map."""
    n = len(reference)
    k = min(n - 1, max(int(3 * perplexity), 15))
    perp = min(perplexity, (k - 1) / 3) if k > 3 else 1.0
    idx, d2 = _neighbors.query(reference, Q, k, threads)
    P, _ = _core.tsne_calibrate(d2, max(perp, 1.0), 1e-5, 200, threads)
    Yref = np.asarray(embedding, dtype=np.float64)
    neigh = Yref[idx]  # (M, k, 2)
    Y = (P[:, :, None] * neigh).sum(axis=1)
    field = _Field(Yref)
    Y = field.clip(Y)
    update = np.zeros_like(Y)
    gains = np.ones_like(Y)
    for _ in range(n_iter):
        diff = Y[:, None, :] - neigh
        w = 1.0 / (1.0 + (diff * diff).sum(axis=2))
        attr = exaggeration * ((P * w)[:, :, None] * diff).sum(axis=1)
        rep, Z = field.repulsion(Y)
        grad = attr - rep / Z[:, None]
        norm = np.sqrt((grad * grad).sum(axis=1, keepdims=True))
        grad = np.where(norm > max_grad_norm, grad * (max_grad_norm / np.maximum(norm, 1e-300)), grad)
        flip = np.sign(grad) != np.sign(update)
        gains = np.maximum(np.where(flip, gains + 0.2, gains * 0.8), 0.01)
        update = momentum * update - learning_rate * gains * grad
        Y = field.clip(Y + update)
    return Y
