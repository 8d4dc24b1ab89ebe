"""Image augmentation follows the task: no mirror unless the task allows it, rotation when declared."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llm_flywheel.students.image import ImageStudent, _augment  # noqa: E402
from llm_flywheel.core.task import Task  # noqa: E402

STILL = {"shift": 0.0, "zoom": 0.0, "color": 0.0, "rotate": 0.0}


def _batch(n: int = 64, size: int = 16) -> "torch.Tensor":
    x = torch.zeros(n, 1, size, size)
    x[:, :, 4:12, 2:5] = 255.0  # a bar on the left: a mirror moves it to the right
    return x


def test_no_flip_by_default_and_mirrors_only_when_allowed():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    same = _augment(16, {**STILL, "flip": False})(x, g)
    assert torch.allclose(same, x, atol=1e-3)  # nothing declared: the image is unchanged, never mirrored
    out = _augment(16, {**STILL, "flip": True})(x, g)
    mirrored = torch.flip(x, dims=[3])
    is_mirror = [(torch.allclose(o, m, atol=1e-3)) for o, m in zip(out, mirrored)]
    is_same = [(torch.allclose(o, s, atol=1e-3)) for o, s in zip(out, x)]
    assert all(a or b for a, b in zip(is_mirror, is_same)) and 10 < sum(is_mirror) < 54


def test_rotation_moves_pixels_within_the_declared_angle():
    x = _batch()
    g = torch.Generator().manual_seed(1)
    small = _augment(16, {**STILL, "rotate": 5.0})(x, g)
    large = _augment(16, {**STILL, "rotate": 90.0})(x, g)
    d_small = float((small - x).abs().mean())
    d_large = float((large - x).abs().mean())
    assert 0 < d_small < d_large


def test_student_takes_the_task_augmentation_and_records_it():
    task = Task(name="d", modality="image", labels=("a", "b"), augment={"rotate": 5, "flip": False})
    s = ImageStudent("image-cnn", task.labels, None, augment=task.augmentation())
    assert s.hp["augment"]["rotate"] == 5 and s.hp["augment"]["flip"] is False
    assert ImageStudent("image-cnn", ("a", "b"), None).hp["augment"]["flip"] is False  # the image default
    assert ImageStudent("image-cnn", ("a", "b"), None, flip=True).hp["augment"]["flip"] is True  # explicit switch
    np.testing.assert_equal(s.hp["augment"], {**task.augmentation()})
