"""Training-time image augmentation, as the task declares it (``Task.augmentation()``).

Why its own module: it is the one piece of the image recipe that is pure tensor arithmetic, shared by the
product's students and the label-efficiency benchmarks, and testable without a network.
"""

from __future__ import annotations

import math
from typing import Any

from llm_flywheel.core.task import DEFAULT_AUGMENT


def _augment(size: int, spec: dict[str, Any] | bool):
    """Batch augmentation on float pixel tensors, as the task declares it (``Task.augmentation()``): random zoom-crop,
    shift, rotation, horizontal/vertical mirror, brightness/contrast.  ``spec`` True/False is the old flip switch.

    Vectorised with one affine grid per batch: cheap enough that augmentation never dominates a CPU epoch.
    """
    import torch
    import torch.nn.functional as F

    a = {**DEFAULT_AUGMENT["image"], **({"flip": spec} if isinstance(spec, bool) else spec)}
    zoom, shift, rot, color = float(a["zoom"]), float(a["shift"]), math.radians(float(a["rotate"])), float(a["color"])

    def aug(x, g):
        n = x.shape[0]
        s = 1 - torch.rand(n, generator=g) * zoom           # zoom in: crop side 1-zoom..1
        tx = (torch.rand(n, generator=g) * 2 - 1) * shift    # shift up to `shift` of the side
        ty = (torch.rand(n, generator=g) * 2 - 1) * shift
        fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if a["flip"] else torch.ones(n)
        fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if a["vflip"] else torch.ones(n)
        ang = (torch.rand(n, generator=g) * 2 - 1) * rot
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(n, 2, 3)  # s * R(ang) @ diag(fx, fy), then the shift
        theta[:, 0, 0] = s * cos * fx
        theta[:, 0, 1] = -s * sin * fy
        theta[:, 1, 0] = s * sin * fx
        theta[:, 1, 1] = s * cos * fy
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        c = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * color
        b = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 80.0 * color
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * c + mean + b).clamp(0, 255)

    return aug
