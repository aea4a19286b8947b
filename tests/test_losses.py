"""ALA, LDAM, QF and DF against an independent NumPy float64 implementation of the paper's
equations (written from the paper, not from ala_paper), in float32 and float64."""
import math

import numpy as np
import pytest
import torch

from ala_paper.losses import (ALALoss, LDAMLoss, class_balanced_weights, difficulty_factor, make_loss,
                              quantity_factor, LOSSES)

COUNTS = [1280, 640, 300, 101, 100, 60, 20, 19, 7, 5]


def np_qf(counts):                       # eq. (7)
    n = np.asarray(counts, dtype=np.float64)
    return np.array([1.0 / math.log(nj / n.min() + 1.0) for nj in n])


def np_ldam_margin(counts, max_m=0.5):   # LDAM: m_j = C / n_j^(1/4), largest = max_m
    m = np.asarray(counts, dtype=np.float64) ** -0.25
    return m * max_m / m.max()


def np_margin_loss_and_grad(cos, target, adj, s, weight=None):
    """Eq. (8) loss (mean or F.cross_entropy-style weighted mean) and d loss / d cos, with the
    per-sample adjusting term `adj` treated as a constant (the paper detaches cos_theta_y in DF)."""
    B, C = cos.shape
    losses, grads, ws = np.zeros(B), np.zeros((B, C)), np.ones(B)
    for i in range(B):
        y = target[i]
        z = [s * (cos[i, j] - (adj[i] if j == y else 0.0)) for j in range(C)]
        mx = max(z)
        denom = sum(math.exp(v - mx) for v in z)
        losses[i] = -(z[y] - mx - math.log(denom))
        for j in range(C):
            p = math.exp(z[j] - mx) / denom
            grads[i, j] = s * (p - (1.0 if j == y else 0.0))
        if weight is not None: ws[i] = weight[y]
    loss = (ws * losses).sum() / ws.sum()
    return loss, grads * (ws / ws.sum())[:, None]


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, size=(12, len(COUNTS)))
    target = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 0])
    return cos, target


def test_qf_and_df_match_paper():
    np.testing.assert_allclose(quantity_factor(COUNTS).numpy(), np_qf(COUNTS), rtol=1e-12)
    np.testing.assert_allclose(quantity_factor(COUNTS, norm='ln2').numpy(), np_qf(COUNTS) * math.log(2), rtol=1e-12)
    c = torch.tensor([-1.0, -0.2, 0.0, 0.7, 1.0], requires_grad=True)
    np.testing.assert_allclose(difficulty_factor(c).numpy(), (1 - c.detach().numpy()) / 2)
    assert difficulty_factor(c).grad_fn is None            # detached


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("variant", ["ala", "ldam", "df", "qf", "df-ldam"])
def test_values_and_gradients_match_independent_implementation(batch, dtype, rtol, weighted, variant):
    cos, target = batch
    s = 30.0
    weight = np.linspace(0.3, 2.0, len(COUNTS)) if weighted else None
    ct = cos[np.arange(len(target)), target]
    df, qf, lm = (1 - ct) / 2, np_qf(COUNTS)[target], np_ldam_margin(COUNTS)[target]
    adj = {"ala": df * qf, "ldam": lm, "df": df, "qf": qf, "df-ldam": df * lm}[variant]
    ref_loss, ref_grad = np_margin_loss_and_grad(cos, target, adj, s, weight)

    w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    crit = LDAMLoss(COUNTS, s=s, weight=w) if variant == "ldam" else ALALoss(COUNTS, s=s, weight=w, variant=variant)
    x = torch.tensor(cos, dtype=dtype, requires_grad=True)
    loss = crit(x, torch.tensor(target))
    loss.backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype
    # float32 weights limit the weighted case to float32 precision
    tol = rtol if not weighted else max(rtol, 2e-6)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=tol)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=tol * 10, atol=tol * 1e-2)


def test_factors_report_what_is_applied(batch):
    cos, target = batch
    f = ALALoss(COUNTS).factors(torch.tensor(cos), torch.tensor(target))
    ct = cos[np.arange(len(target)), target]
    np.testing.assert_allclose(f["df"].numpy(), (1 - ct) / 2, rtol=1e-6)
    np.testing.assert_allclose(f["qf"].numpy(), np_qf(COUNTS)[target], rtol=1e-6)
    np.testing.assert_allclose(f["a"].numpy(), (1 - ct) / 2 * np_qf(COUNTS)[target], rtol=1e-6)


def test_weight_changes_the_loss_and_can_be_switched_on_later(batch):
    cos, target = batch
    x, t = torch.tensor(cos, dtype=torch.float32), torch.tensor(target)
    crit = ALALoss(COUNTS)
    plain = crit(x, t).item()
    crit.weight = class_balanced_weights(COUNTS)           # what DRW does
    assert abs(crit(x, t).item() - plain) > 1e-4
    crit.weight = None
    assert crit(x, t).item() == pytest.approx(plain)


def test_half_precision_logits_are_computed_in_float32(batch):
    cos, target = batch
    x16 = torch.tensor(cos, dtype=torch.bfloat16, requires_grad=True)
    loss = ALALoss(COUNTS)(x16, torch.tensor(target))
    loss.backward()
    ref = ALALoss(COUNTS)(x16.detach().float(), torch.tensor(target))
    assert loss.dtype == torch.float32 and x16.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("counts,cls", [([10, 0, 3], 1), ([4, 5, -1], 2), ([3, float("nan")], 1)])
def test_zero_or_negative_counts_raise_naming_the_class(counts, cls):
    for make in (lambda: ALALoss(counts), lambda: LDAMLoss(counts), lambda: quantity_factor(counts)):
        with pytest.raises(ValueError, match=f"class {cls} has"):
            make()


def test_bad_inputs_have_one_line_messages():
    crit = ALALoss(COUNTS)
    cases = [
        (torch.zeros(3, 4), torch.tensor([0, 1, 2]), "shape \\[batch, 10\\]"),
        (torch.zeros(3, 10), torch.tensor([0, 1]), "target must have shape \\[3\\]"),
        (torch.zeros(2, 10), torch.tensor([0, 10]), "target 10 is out of range"),
        (torch.zeros(2, 10), torch.tensor([-1, 0]), "target -1 is out of range"),
        (torch.full((2, 10), 5.0), torch.tensor([0, 1]), "cosine logits"),
        (torch.full((2, 10), float("nan")), torch.tensor([0, 1]), "NaN"),
        (torch.zeros(2, 10).index_put((torch.tensor([0]), torch.tensor([3])), torch.tensor(float("inf"))),
         torch.tensor([0, 1]), "NaN or inf"),
        (torch.zeros(2, 10), torch.tensor([0.0, 1.0]), "int64 class indices"),
        (torch.zeros(2, 10), torch.tensor([0, 1], dtype=torch.int32), "target.long\\(\\)"),
    ]
    for x, t, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            crit(x, t)
        assert "\n" not in str(e.value)


def test_bad_construction_has_one_line_messages():
    for make, msg in [(lambda: ALALoss([5, 0, 3]), "class 1 has 0"), (lambda: ALALoss(COUNTS, variant="dfqf"), "unknown ALA variant"),
                      (lambda: make_loss("ala-loss", COUNTS), "use one of ce, focal"),
                      (lambda: LDAMLoss(COUNTS)(torch.full((2, 10), -2.0), torch.tensor([0, 1])), "cosine logits")]:
        with pytest.raises(ValueError, match=msg) as e:
            make()
        assert "\n" not in str(e.value)


def test_every_named_loss_trains_a_step():
    torch.manual_seed(0)
    x = torch.rand(16, len(COUNTS)) * 2 - 1
    t = torch.randint(0, len(COUNTS), (16,))
    for name in LOSSES:
        w = torch.zeros(len(COUNTS), 4, requires_grad=True)
        feats = torch.randn(16, 4)
        logits = torch.tanh(feats @ w.T + x)             # stays in [-1, 1] for the cosine losses
        crit = make_loss(name, COUNTS)
        crit(logits, t).backward()
        assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0, name
        crit.weight = class_balanced_weights(COUNTS)          # DRW switches weights on like this
        assert torch.isfinite(crit(logits.detach(), t)), name
