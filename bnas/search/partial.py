"""Partial channel connections and edge normalisation (PC-DARTS, Xu et al., ICLR 2020, Sec. 3.2).

With ``--partial-channels K``, an edge sends only the first ``C/K`` channels of its input
through the mixed operation; the other channels bypass it (a 2x2 max pooling halves them on a
strided edge, as PC-DARTS's code does) and the two parts are concatenated, then shuffled so
that the next edge samples other channels (Eq. 2, with ShuffleNet's channel shuffle in K
groups)::

    f_PC(x) = shuffle(cat(sum_o softmax(alpha)_o * o(S * x), (1 - S) * x), K)

Sampling channels makes the alphas noisy; *edge normalisation* (Eq. 3-4) gives every edge
``(i, j)`` a weight ``beta_ij``, normalised by a softmax over the edges entering node ``i``, by
which the edge's output is multiplied: ``x_i = sum_j softmax(beta_i)_j * f_PC_ij(x_j)``. At
derivation an edge's strength is its strongest operation's weight times its normalised beta
(the betas "also enter derivation"); the operation kept on an edge is its strongest one.

Both supernet implementations take partial channels the same way: their mixed operations (a
:class:`~bnas.search.mixed.MixedOp` per edge, or a :class:`~bnas.search.mixed.FanOut` per node
for all its edges) are built for ``C/K`` channels and read the first ``C/K`` channels of the
node; :func:`combine` then appends the bypassed channels and shuffles, edge by edge.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BnasError


def check(channels: int, k: int) -> None:
    """``k`` must be a positive divisor of the channel count ``channels``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or channels % k:
        raise BnasError(f"--partial-channels K must divide the channels ({channels}), got {k!r}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle (Zhang et al., CVPR 2018): ``(N, g*c, H, W)`` viewed as
    ``(N, g, c, H, W)``, the two channel axes swapped, flattened back."""
    n, channels, h, w = x.shape
    return x.view(n, groups, channels // groups, h, w).transpose(1, 2).reshape(n, channels, h, w)


def split(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The channels through the mixed operation (the first ``C/K``) and those that bypass it."""
    part = x.shape[1] // k
    return x[:, :part], x[:, part:]


def bypass(rest: torch.Tensor, stride: int) -> torch.Tensor:
    """The bypassed channels, halved by a 2x2 max pooling on a strided edge."""
    return F.max_pool2d(rest, 2, 2) if stride == 2 else rest


def combine(mixed: torch.Tensor, rest: torch.Tensor, k: int) -> torch.Tensor:
    """``shuffle(cat(mixed, rest), K)`` for one edge; ``rest`` is already :func:`bypass`-ed."""
    return channel_shuffle(torch.cat([mixed, rest], dim=1), k)


def edge_weights(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """``(n_edges,)``: each node's betas softmax-normalised over its incoming edges (Eq. 4)."""
    parts, start = [], 0
    for node in range(2, steps + 2):
        parts.append(F.softmax(betas[start:start + node], dim=-1))
        start += node
    return torch.cat(parts)


def derivation_weights(weights: torch.Tensor, betas: torch.Tensor, steps: int) -> torch.Tensor:
    """The operation weights scaled row by row by the normalised betas: each row's strongest
    operation is unchanged, and the edge's strength is PC-DARTS's."""
    return weights * edge_weights(betas, steps).unsqueeze(1).to(weights)
