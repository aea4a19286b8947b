"Calibration, confusion, tau sweeps and tau-norm on tiny logits with known answers; a run's tau = 1 is its PC Softmax row."
import json

import numpy as np
import pytest
import torch

from ala_paper.analysis import (analyse_run, analysis_table, best_tau, by_training_count, calibration_bins,
                                check_logits, compare, confusion_matrix, ece, ece_by_group, load_run, method_name, reading,
                                runs_with_logits, tau_norm_sweep, tau_normalise, tau_sweep)
from ala_paper.losses import posthoc_logit_adjust
from ala_paper.metrics import group_accuracy, per_class_accuracy


def log(rows): return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_ece_known_answers():
    assert ece(log([[0.8, 0.2]] * 10), [0] * 8 + [1] * 2) == pytest.approx(0, abs=1e-9)   # 8 of 10 right at 0.8
    assert ece(log([[0.8, 0.2]] * 10), [0] * 10) == pytest.approx(20)                     # under-confident by 0.2
    assert ece(torch.tensor([[30., -30.]] * 4), [1] * 4) == pytest.approx(100)            # sure and always wrong
    assert ece(torch.zeros(0, 3), []) is None


def test_ece_of_a_sampled_calibrated_predictor_is_small():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(20000, 4, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    assert ece(logits, labels) < 1.5
    assert ece(4 * logits, labels) > 10          # the same predictions, over-confident


def test_calibration_bins_count_every_sample_once():
    g = torch.Generator().manual_seed(1)
    b = calibration_bins(torch.randn(500, 7, generator=g), torch.randint(0, 7, (500,), generator=g), n_bins=10)
    assert b['count'].sum() == 500 and len(b['edges']) == 11
    assert b['count'][:1].sum() == 0             # the top of 7 probabilities is >= 1/7 > 0.1


def test_ece_by_group_splits_by_true_class():
    r = ece_by_group(log([[0.8, 0.1, 0.1]] * 10 + [[0.1, 0.1, 0.8]] * 10), [0] * 8 + [1] * 2 + [2] * 10, [500, 50, 5])
    assert r == pytest.approx({'all': 10.0, 'many': 20.0, 'medium': 80.0, 'few': 20.0})
    assert ece_by_group(log([[0.8, 0.2]] * 2), [0, 0], [500, 5])['few'] is None        # no test sample of class 1


def test_bad_logits_are_one_line_errors():
    with pytest.raises(ValueError, match='NaN'): check_logits([[0., float('nan')]], [0])
    with pytest.raises(ValueError, match='labels must lie'): check_logits([[0., 1.]], [-1])
    with pytest.raises(ValueError, match='do not fit'): ece(torch.zeros(3, 2), [0, 1])


def test_confusion_matrix_known():
    cm = confusion_matrix([0, 0, 1, 0, 2, 2], [0, 0, 1, 1, 2, 0], 3)
    assert torch.allclose(cm, torch.tensor([[2 / 3, 0, 1 / 3], [0.5, 0.5, 0], [0, 0, 1]], dtype=torch.float64))
    assert confusion_matrix([1], [1], 3).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]   # rows without samples stay 0
    assert confusion_matrix([0, 1, 1], [0, 0, 1], 2, normalise=False).tolist() == [[1, 1], [0, 1]]
    assert by_training_count([5, 500, 50, 500]).tolist() == [1, 3, 2, 0]


def test_tau_sweep_tau1_is_posthoc_logit_adjust():
    g = torch.Generator().manual_seed(2)
    logits, labels, counts = torch.randn(400, 5, generator=g), torch.randint(0, 5, (400,), generator=g), [300, 90, 40, 12, 3]
    sweep = tau_sweep(logits, labels, counts, taus=(0.0, 1.0))
    direct = group_accuracy(per_class_accuracy(posthoc_logit_adjust(logits, counts, 1.0).argmax(1), labels, 5), counts)
    assert sweep[1]['top1'] == direct
    assert sweep[0]['top1'] == group_accuracy(per_class_accuracy(logits.argmax(1), labels, 5), counts)


def test_best_tau_cancels_a_known_prior():
    feat = torch.tensor([[1., 0.]] * 50 + [[0., 1.]] * 50)
    logits = 0.1 * feat + torch.log(torch.tensor([0.9, 0.1]))
    best = best_tau(tau_sweep(logits, [0] * 50 + [1] * 50, [900, 100]))
    assert best['tau'] == 1.0 and best['top1']['all'] == 100.0 and best['selected_on'].startswith('test set')
    assert best_tau([dict(tau=0.5, top1={'all': 1.0})], held_out=True)['selected_on'] == 'held-out split'


def test_tau_normalise_matches_rescaled_head():
    g = torch.Generator().manual_seed(3)
    w, b, f = torch.randn(4, 6, generator=g) * torch.tensor([[4.], [1.], [.5], [.1]]), torch.randn(4, generator=g), torch.randn(30, 6, generator=g)
    z = f @ w.T + b
    for tau in (0.0, 0.7, 1.0):
        expected = f.double() @ (w.double() / w.double().norm(dim=1, keepdim=True) ** tau).T + b.double()
        assert torch.allclose(tau_normalise(30 * z, w, b, tau, scaled_by=30), 30 * expected, atol=1e-3)
    assert torch.allclose(tau_normalise(z, w, b, 0.0), z.double(), atol=1e-5)             # tau = 0: the model itself
    rows = tau_norm_sweep(z, z.argmax(1), [400, 100, 30, 5], w, b, taus=(0.0,))
    assert rows[0]['top1']['all'] == 100.0
    with pytest.raises(ValueError, match='does not fit'): tau_normalise(z, w[:3], b[:3])


def test_method_name():
    assert method_name(dict(loss='ldam', drw_epoch=160)) == 'ldam-drw'
    assert method_name(dict(loss='ala', drw_epoch=160)) == 'ala'
    assert method_name(dict(loss='ce', drw_epoch=-1)) == 'ce'


def test_load_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no results.json'): load_run(tmp_path)
    (tmp_path / 'results.json').write_text(json.dumps(dict(class_counts=[5, 3], test_targets=[0, 1],
                                                           test_logits=dict(file='test_logits.npy', scaled_by=1.0))))
    with pytest.raises(FileNotFoundError, match='ala_paper.evaluate'): load_run(tmp_path)
    np.save(tmp_path / 'test_logits.npy', np.zeros((3, 2), np.float16))
    with pytest.raises(ValueError, match='does not belong'): load_run(tmp_path)
    assert runs_with_logits(tmp_path) == ([tmp_path], [])


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    from ala_paper.train import train
    out = tmp_path_factory.mktemp('run') / 'ce'
    train(dataset='synthetic-lt', loss='ce', epochs=2, device='cpu', out_dir=str(out), verbose=False, progress=False)
    return out


def test_run_tau1_reproduces_recorded_pc_softmax(tiny_run):
    res = json.loads((tiny_run / 'results.json').read_text())
    a = analyse_run(tiny_run)
    at1 = next(r for r in a['tau_sweep'] if r['tau'] == 1.0)['top1']
    assert at1 == pytest.approx(res['posthoc_logit_adjust']['top1'])
    assert a['top1'] == pytest.approx(res['top1'])
    assert a['method'] == 'ce' and a['tau_norm'] is not None     # a linear head with its checkpoint: tau-norm runs
    table = analysis_table([tiny_run])
    assert table.loc[0, 'pc_softmax_top1'] == pytest.approx(res['posthoc_logit_adjust']['top1']['all'])
    assert '- ala: top-1 ' in reading(table.assign(method='ala')) and reading(table) == ''   # no ALA run: nothing to read


def test_reading_verdicts_follow_the_seed_spread():
    import pandas as pd
    row = lambda m, seed, e: dict(dataset='toy', method=m, seed=seed, top1=50., ece_all=e, ece_many=e, ece_medium=e,
                                  ece_few=None, pc_softmax_top1=51., best_tau=1.0, best_tau_top1=52., tau_norm_tau=None,
                                  tau_norm_top1=None)
    table = pd.DataFrame([row('ala', 0, 5.), row('ala', 1, 6.), row('ce', 0, 10.), row('ce', 1, 11.),
                          row('ldam-drw', 0, 5.), row('ldam-drw', 1, 7.)])
    text = reading(table)
    assert 'ECE of ala vs ce: all 5.5 ± 0.7 vs 10.5 ± 0.7 (lower)' in text
    assert 'ECE of ala vs ldam-drw: all 5.5 ± 0.7 vs 6.0 ± 1.4 (within the seed spread)' in text
    assert 'few - vs - (not measured)' in text and 'selected on the test set' in text
    assert compare((1.0, None, 1), (2.0, None, 1)) == 'lower, one seed: not evidence'
    assert compare((3.0, 0.1, 2), (2.0, 0.2, 2)) == 'higher'


def test_evaluated_folder_finds_its_checkpoint(tiny_run, tmp_path):
    from ala_paper.evaluate import evaluate_checkpoint
    evaluate_checkpoint(tiny_run, out=tmp_path / 'eval', device='cpu', verbose=False)
    a, b = analyse_run(tiny_run), analyse_run(tmp_path / 'eval')
    assert b['tau_norm'] is not None and b['tau_norm'] == a['tau_norm'] and b['ece'] == a['ece']
