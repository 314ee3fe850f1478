"""TTA's one definition: the mean of the views' logits, then softmax(mean / T)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skin.serve.tta import probabilities, view_logits, views
from skin.train.datasets import dihedral_view


def test_tta_scores_the_eight_dihedral_views_and_without_it_the_image_alone() -> None:
    assert len(views(True)) == 8 and len(set(views(True))) == 8
    assert views(False) == views(True)[:1]


def test_the_answer_is_the_mean_of_the_views_logits() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4))
    x = torch.randint(0, 255, (5, 3, 6, 6), dtype=torch.uint8)
    prep = lambda t: t.float() / 255  # noqa: E731
    each = [net(prep(dihedral_view(x, k, tr))) for k, tr in views(True)]
    got = view_logits(net, x, prep, tta=True, dtype=None)
    torch.testing.assert_close(got, torch.stack(each).mean(0))
    torch.testing.assert_close(view_logits(net, x, prep, tta=False, dtype=None), each[0])
    assert not torch.allclose(got, each[0]), "the views differ for a net that is not invariant"


def test_probabilities_divide_the_mean_logits_by_the_temperature() -> None:
    z = np.array([[2.0, 0.0, -1.0]])
    for t in (1.0, 2.5):
        expected = np.exp(z / t) / np.exp(z / t).sum()
        np.testing.assert_allclose(probabilities(z, t), expected)
    assert probabilities(z, 2.5).max() < probabilities(z).max(), "T > 1 softens"
    with pytest.raises(ValueError):
        probabilities(z, 0.0)
