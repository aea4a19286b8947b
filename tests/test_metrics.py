"Metrics against hand-computed values."
import math
import torch
import pytest
from ala_paper.metrics import shot_group, shot_groups, per_class_accuracy, group_accuracy, true_class_prob


def test_shot_group_boundaries():
    assert [shot_group(n) for n in (101, 100, 20, 19, 1)] == ['many', 'medium', 'medium', 'few', 'few']


def test_group_accuracy_by_hand():
    # counts: many, many, medium, few, few ; test samples: 2, 4, 1, 3, 0
    counts = [300, 150, 40, 10, 2]
    targets = torch.tensor([0, 0, 1, 1, 1, 1, 2, 3, 3, 3])
    preds = torch.tensor([0, 1, 1, 1, 1, 0, 0, 3, 0, 0])
    acc = per_class_accuracy(preds, targets, 5)
    assert acc[:4].tolist() == pytest.approx([50.0, 75.0, 0.0, 100 / 3])
    assert math.isnan(acc[4])
    g = group_accuracy(acc, counts)
    assert g['many'] == pytest.approx(62.5) and g['medium'] == pytest.approx(0.0)
    assert g['few'] == pytest.approx(100 / 3)   # class 4 has no test sample: left out
    assert g['all'] == pytest.approx((50 + 75 + 0 + 100 / 3) / 4)
    assert group_accuracy(acc[:2], counts[:2])['few'] is None


def test_true_class_prob():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = true_class_prob(logits, torch.tensor([0, 2]))
    e = math.e
    assert p.tolist() == pytest.approx([e / (e + 2), 1 / 3], abs=1e-6)
    cos = torch.tensor([[0.5, 0.4]])
    assert true_class_prob(cos, [1], scale=30).item() == pytest.approx(1 / (1 + math.exp(3)), abs=1e-6)
    assert shot_groups([1, 200])['many'].tolist() == [1]


def test_group_accuracy_by_attribute():
    from ala_paper.metrics import group_accuracy_by
    r = group_accuracy_by([90.0, 10.0, 70.0, None], [500, 500, 3, 3], ['hard', 'easy', 'hard', 'easy'])
    assert r['hard'] == {'all': 80.0, 'many': 90.0, 'medium': None, 'few': 70.0}
    assert r['easy'] == {'all': 10.0, 'many': 10.0, 'medium': None, 'few': None}
