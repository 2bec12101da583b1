"""The random draws of training-target sampling (RPN anchors, RoIs, keypoint RoIs).

Detectron draws with ``numpy.random`` (``npr.choice`` / ``npr.randint``) inside
``roi_data/rpn.py`` and ``roi_data/fast_rcnn.py``; every draw here goes through one
:data:`Sampler`, so tests can replay Detectron's calls, while training draws from a
``torch.Generator`` (``RandomSampler``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Sampler = Callable[[Tensor, int, bool], Tensor]
"""``sample(candidates, k, replace)``: ``k`` elements of the 1-D tensor ``candidates``,
like ``numpy.random.choice(candidates, k, replace)``; with ``replace`` Detectron draws
positions uniformly (``candidates[npr.randint(len, size=k)]``)."""


class RandomSampler:
    """The default :data:`Sampler`: ``torch.randperm`` / ``torch.randint`` from one generator.

    The generator lives on the CPU unless given, so the draws do not depend on the
    device the targets are built on.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator if generator is not None else torch.Generator()

    def __call__(self, candidates: Tensor, k: int, replace: bool) -> Tensor:
        n = candidates.numel()
        dev = self.generator.device
        if replace:
            pos = torch.randint(n, (k,), generator=self.generator, device=dev)
        else:
            if k > n:
                raise ValueError(f"cannot draw {k} of {n} without replacement")
            pos = torch.randperm(n, generator=self.generator, device=dev)[:k]
        return candidates[pos.to(candidates.device)]
