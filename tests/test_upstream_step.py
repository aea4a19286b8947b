"""Is our training step LDAM-DRW's training step? Step-level equivalence in float64, both memory layouts.

`Theirs` below is a stand-in written for this test from the description of kaidic/LDAM-DRW's CIFAR ResNet
(`models/resnet_cifar.py`) and loss (`losses.py`); none of their code is in this repository. What it keeps of
theirs is what could differ from ours: the module layout and parameter shapes (a `[in, out]` cosine weight
normalised over its input dimension, a biased linear head for CE), the option-A shortcut (subsample, then
zero-pad the channels), the average pool as `avg_pool2d` over the whole map, the LDAM margin applied through a
one-hot mask with float32 margins, DRW weights through `F.cross_entropy(weight=...)`, and one SGD parameter group.
Our side is the engine's own step: `setup()` (model, optimiser groups, schedule) and `_step()` with the real loss.
From the same weights, on the same batches (augmented once and fed to both), in float64 every parameter, every
BatchNorm statistic and every loss must agree to 1e-10: any difference in what is computed shows up at once.
In float32 two runs of the same code part after a few dozen steps (rounding; see `layout_gradient_error` in
`nbs/04_train.ipynb`), so float64 is where equality can be asked for.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ala_paper.data import load_dataset
from ala_paper.transforms import random_crop_flip
from ala_paper.fixtures import make_cifar_pickles
from ala_paper.losses import class_balanced_weights, make_loss
from ala_paper.engine import resolve_params
from ala_paper.train import EpochTotals, _build_model, _step, setup


class TheirBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + short)


class TheirNormedLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cin, cout))           # [in, out], as theirs

    def forward(self, x): return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class Theirs(nn.Module):
    def __init__(self, depth=32, num_classes=10, cosine=True):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        cin, layers = 16, []
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(TheirBlock(cin, width, 2 if stage and not j else 1))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = TheirNormedLinear(64, num_classes) if cosine else nn.Linear(64, num_classes)

    def forward(self, x):
        h = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(h, h.shape[3]).flatten(1))


def their_margins(counts, max_m=0.5, dtype=torch.float32):
    "Margins in float64 numpy, then a FloatTensor (theirs); `dtype=float64` keeps them exact for a float64 run."
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))
    return torch.tensor(m * (max_m / m.max()), dtype=dtype)


def their_ldam(cos, target, counts, weight=None, max_m=0.5, s=30.0, margin_dtype=torch.float32):
    m = their_margins(counts, max_m, margin_dtype)
    mask = torch.zeros_like(cos, dtype=torch.bool).scatter_(1, target.view(-1, 1), True)
    shift = (m[None, :].to(cos.dtype) @ mask.to(cos.dtype).t()).view(-1, 1)
    return F.cross_entropy(s * torch.where(mask, cos - shift, cos), target, weight=weight)


def copy_ours_to_theirs(ours, theirs, depth):
    "Our parameter and buffer tensors into their layout: stem -> conv1/bn1, blocks[k] -> layerS[j], head -> linear."
    n, sd, mine = (depth - 2) // 6, {}, ours.state_dict()
    for key in theirs.state_dict():
        if key.startswith(('conv1.', 'bn1.')):
            src = f"backbone.stem.{0 if key.startswith('conv1.') else 1}.{key.split('.', 1)[1]}"
        elif key.startswith('layer'):
            stage, j, rest = int(key[5]), int(key.split('.')[1]), key.split('.', 2)[2]
            src = f'backbone.blocks.{n * (stage - 1) + j}.{rest}'
        else: src = 'head.' + key.split('.', 1)[1]
        sd[key] = mine[src].t() if key == 'linear.weight' and isinstance(theirs.linear, TheirNormedLinear) else mine[src]
    theirs.load_state_dict({k: v.clone() for k, v in sd.items()})
    return theirs


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    make_cifar_pickles(root, per_class=60, test_per_class=2)
    return root


def batches(data, num, batch_size, seed=0):
    "`num` batches of the training images, cropped and flipped once, normalised in float64: fed to both sides."
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.from_numpy(data.train.data).permute(0, 3, 1, 2), torch.from_numpy(data.train.targets)
    tf = data.pipeline.train_batch
    for _ in range(num):
        idx = torch.randperm(len(labels), generator=g)[:batch_size]
        x = random_crop_flip(images[idx], tf.pad, tf.flip, generator=g).double()
        yield ((x - tf.mean.double()) / tf.std.double()).contiguous(), labels[idx]


@pytest.mark.parametrize('loss,channels_last', [('ldam', False), ('ldam', True), ('ce', False)])
def test_our_step_is_their_step_in_float64(cifar, tmp_path, loss, channels_last):
    depth, steps, drw_from = 32, 12, 6
    params = resolve_params(dataset='cifar10-lt', data_root=str(cifar), imbalance_ratio=10, loss=loss, init='ldam',
                            device='cpu', channels_last=channels_last, batch_size=32, warmup_epochs=0, workers=0,
                            out_dir=str(tmp_path / 'run'))
    data = load_dataset('cifar10-lt', str(cifar), imbalance_ratio=10, draw='ldam')
    model = _build_model(params, data, 0, 1).double()
    theirs = copy_ours_to_theirs(model, Theirs(depth, 10, cosine=loss == "ldam").double(), depth)
    run = setup(params, data, make_loss(loss, data.class_counts), model)
    opt = torch.optim.SGD(theirs.parameters(), params['lr'], momentum=params['momentum'],
                          weight_decay=params['weight_decay'])
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert run.model.backbone.stem[0].weight.is_contiguous(memory_format=layout)
    theirs.train()
    totals = EpochTotals(run.loss_fn, data.class_counts, 'cpu')
    for k, (x, y) in enumerate(batches(data, steps, 32)):
        weight = class_balanced_weights(data.class_counts).float() if k >= drw_from else None   # DRW halfway
        run.loss_fn.weight = weight
        for group in opt.param_groups: group['lr'] = run.opt.param_groups[-1]['lr']
        ours_loss = _step(run, [(x, y)], lambda t: t.contiguous(memory_format=layout), totals)
        out = theirs(x)
        w = None if weight is None else weight.to(out.dtype)
        their_loss = their_ldam(out, y, data.class_counts, w, margin_dtype=out.dtype) if loss == 'ldam' else \
            F.cross_entropy(out, y, weight=w)
        opt.zero_grad(); their_loss.backward(); opt.step()
        assert math.isclose(ours_loss.item(), their_loss.item(), rel_tol=1e-10), (k, ours_loss.item(), their_loss.item())
    mine = copy_ours_to_theirs(run.model, Theirs(depth, 10, cosine=loss == "ldam").double(), depth).state_dict()
    for key, value in theirs.state_dict().items():
        if value.is_floating_point():
            err = ((mine[key] - value).norm() / value.norm().clamp_min(1e-30)).item()
            assert err < 1e-10, (key, err)


def test_margins_round_to_theirs_in_float32():
    "In float32 training both sides use the same float32 margins (the float64 test gives theirs float64 ones)."
    for counts in ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], [500, 7, 3, 1]):
        assert torch.equal(make_loss('ldam', counts).margins.float(), their_margins(counts))


def test_the_check_sees_a_difference(cifar, tmp_path):
    "The comparison is not blind: their bias-free cosine head with a margin of 0.4 instead of 0.5 parts at once."
    params = resolve_params(dataset='cifar10-lt', data_root=str(cifar), imbalance_ratio=10, loss='ldam', init='ldam',
                            device='cpu', channels_last=False, batch_size=32, warmup_epochs=0, workers=0,
                            out_dir=str(tmp_path / 'run'))
    data = load_dataset('cifar10-lt', str(cifar), imbalance_ratio=10, draw='ldam')
    model = _build_model(params, data, 0, 1).double()
    theirs = copy_ours_to_theirs(model, Theirs(32, 10).double(), 32).train()
    run = setup(params, data, make_loss('ldam', data.class_counts), model)
    x, y = next(batches(data, 1, 32))
    ours_loss = _step(run, [(x, y)], lambda t: t, EpochTotals(run.loss_fn, data.class_counts, 'cpu'))
    assert not math.isclose(ours_loss.item(), their_ldam(theirs(x), y, data.class_counts, max_m=0.4, margin_dtype=torch.float64).item(),
                            rel_tol=1e-6)
