"python -m ala_paper.evaluate: a tiny run's checkpoint gives back its results.json's numbers exactly; each mistake is one line, status 2."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from ala_paper.core import CHECKPOINT, RESULTS
from ala_paper.evaluate import evaluate_checkpoint, main, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from ala_paper.train import train
    out = tmp_path_factory.mktemp('evaluate') / 'run'
    train(dataset='synthetic-lt', loss='ce', epochs=2, device='cpu', out_dir=str(out), verbose=False, progress=False)
    return out


def test_evaluate_reproduces_the_run_exactly(run_dir, tmp_path):
    trained = json.loads((run_dir / RESULTS).read_text())
    again = evaluate_checkpoint(run_dir / CHECKPOINT, out=tmp_path / 'eval', device='cpu', verbose=False)
    for key in ('top1', 'per_class_acc', 'posthoc_logit_adjust', 'test_targets', 'true_class_prob', 'class_counts',
                'class_names', 'history'):
        assert again[key] == trained[key], key
    written = json.loads((tmp_path / 'eval' / RESULTS).read_text())
    assert written['top1'] == trained['top1'] and written['evaluated_from']['epoch'] == 2
    assert (tmp_path / 'eval' / 'test_logits.npy').read_bytes() == (run_dir / 'test_logits.npy').read_bytes()


def test_the_kept_weights_reproduce_the_run_and_enter_the_zoo(run_dir, tmp_path):
    "train() keeps weights.pt (its SHA-256 in results.json); evaluated alone they give the run's numbers; the zoo lists it."
    import shutil
    from ala_paper.core import file_sha256
    from ala_paper.zoo import zoo_table
    trained = json.loads((run_dir / RESULTS).read_text())
    assert trained['weights'] == dict(file='weights.pt', bytes=(run_dir / 'weights.pt').stat().st_size,
                                      sha256=file_sha256(run_dir / 'weights.pt'))
    with pytest.raises(ValueError, match='holds weights only'):          # weights alone carry no recipe
        shutil.copy(run_dir / 'weights.pt', tmp_path / 'alone.pt'); read_checkpoint(tmp_path / 'alone.pt')
    zoo = tmp_path / 'zoo' / 'run'
    shutil.copytree(run_dir, zoo, ignore=shutil.ignore_patterns('evaluated*', CHECKPOINT))
    again = evaluate_checkpoint(zoo / 'weights.pt', out=tmp_path / 'eval', device='cpu', verbose=False)
    for key in ('top1', 'per_class_acc', 'posthoc_logit_adjust', 'true_class_prob'): assert again[key] == trained[key], key
    assert list(zoo_table(tmp_path / 'zoo').weights) == ['kept']
    data = bytearray((zoo / 'weights.pt').read_bytes()); data[-100] ^= 1; (zoo / 'weights.pt').write_bytes(bytes(data))
    assert list(zoo_table(tmp_path / 'zoo').weights) == ['changed']


def _cli(*args, cwd):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-m', 'ala_paper.evaluate', *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _variant(run_dir, path, change):
    ck = torch.load(run_dir / CHECKPOINT, weights_only=True)
    change(ck)
    torch.save(ck, path)
    return path


def _mistakes(run_dir, tmp):
    data = (run_dir / CHECKPOINT).read_bytes()
    (tmp / 'cut.pt').write_bytes(data[:len(data) // 3])
    (tmp / 'notes.txt').write_text('hello')
    def fewer_classes(ck):
        ck['model']['head.weight'] = ck['model']['head.weight'][:5]
        ck['model']['head.bias'] = ck['model']['head.bias'][:5]
    return {
        'checkpoint not found': ['--checkpoint', tmp / 'missing.pt'],
        'is not a PyTorch checkpoint': ['--checkpoint', tmp / 'notes.txt'],
        'is damaged or cut short': ['--checkpoint', tmp / 'cut.pt'],
        'do not fit resnet20': ['--checkpoint', _variant(run_dir, tmp / 'arch.pt',
                                                         lambda ck: ck['params'].update(arch='resnet20'))],
        'head for 5 classes': ['--checkpoint', _variant(run_dir, tmp / 'five.pt', fewer_classes)],
        'was trained on synthetic-lt, not cifar10-lt': ['--checkpoint', run_dir, '--dataset', 'cifar10-lt'],
        "unknown dataset 'mnist-lt'": ['--checkpoint', run_dir, '--dataset', 'mnist-lt'],
        "checkpoint's own folder": ['--checkpoint', run_dir, '--out', run_dir],
        'required: --checkpoint': [],
    }


def test_every_mistake_is_one_line_and_status_2(run_dir, tmp_path, capsys):
    for expected, args in _mistakes(run_dir, tmp_path).items():
        with pytest.raises(SystemExit) as stop: main(list(map(str, args)))
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith('error: ') and len(err.splitlines()) == 1, (expected, err)
        assert expected in err, (expected, err)
    proc = _cli('--checkpoint', tmp_path / 'cut.pt', cwd=tmp_path)           # and through the real command line
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ') and 'cut short' in lines[0]
    assert not (tmp_path / 'evaluated').exists()


def test_other_data_than_the_run_recorded(run_dir, tmp_path):
    (tmp_path / CHECKPOINT).write_bytes((run_dir / CHECKPOINT).read_bytes())
    res = json.loads((run_dir / RESULTS).read_text())
    (tmp_path / RESULTS).write_text(json.dumps(dict(res, class_counts=[c + 1 for c in res['class_counts']])))
    with pytest.raises(ValueError, match='it is other data'):
        evaluate_checkpoint(tmp_path, out=tmp_path / 'eval', device='cpu', verbose=False)
    assert not (tmp_path / 'eval' / RESULTS).exists()


def test_cli_writes_the_results(run_dir, tmp_path):
    proc = _cli('--checkpoint', run_dir / CHECKPOINT, '--out', tmp_path / 'out', '--device', 'cpu', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / 'out' / RESULTS).read_text())['top1'] == json.loads((run_dir / RESULTS).read_text())['top1']
