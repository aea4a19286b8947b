"""`python -m ala_paper.upstream` (their code on our images): a user's mistakes end in one line and exit 2,
and leave no results.json behind; a run on the stand-in repository writes one."""
import json, os, subprocess, sys

import pytest

from ala_paper.data import cifar_lt_counts
from ala_paper.fixtures import make_cifar_folders
from ala_paper.upstream import make_fake_ldam_repo, write_cifar_pickles

ENV = {**os.environ, 'PYTHONUNBUFFERED': '1'}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'ala_paper.upstream', *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('upstream')
    make_cifar_folders(root / 'jpeg', per_class=7, test_per_class=3)
    write_cifar_pickles(root / 'jpeg', root / 'cifar', progress=False)
    return root, make_fake_ldam_repo(root / 'repo')


@pytest.mark.parametrize('change,expect', [
    (dict(repo='nowhere'), 'nowhere/cifar_train.py not found: pass the root of a clone of kaidic/LDAM-DRW'),
    (dict(schedule='1,24'), "--schedule takes three integers 'warmup,first,second', got '1,24'"),
    (dict(schedule='30,24,27'), 'need 0 < warmup <= first < second'),
    (dict(epochs=0), '--epochs must be >= 1, got 0'),
    (dict(pickles='EMPTY'), 'cifar-10-batches-py is incomplete (no data_batch_1): write it from an image folder with --images'),
    (dict(pickles=None, images='nowhere'), '--images nowhere is not a folder'),
    (dict(out='AFILE/run'), 'AFILE is a file, not a folder'),
    (dict(repo='AFILE'), 'AFILE/cifar_train.py not found'),
])
def test_mistakes_give_one_line(tree, tmp_path, change, expect):
    root, repo = tree
    (tmp_path / 'EMPTY').mkdir()
    (tmp_path / 'AFILE').write_text('')
    opts = dict(repo=repo, pickles=root / 'cifar', out=tmp_path / 'out', epochs=2, schedule='1,2,3')
    opts.update({k: (tmp_path / v if v in ('EMPTY', 'AFILE', 'AFILE/run') else v) for k, v in change.items()})
    args = sum(([f'--{k}', v] for k, v in opts.items() if v is not None), [])
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and expect in lines[0], r.stderr
    assert not (tmp_path / 'out' / 'results.json').exists()


def test_a_run_on_the_stand_in_writes_results(tree, tmp_path):
    root, repo = tree
    r = cli('--repo', repo, '--images', root / 'jpeg', '--out', tmp_path / 'out', '--epochs', 3, '--schedule', '1,2,3',
            '--loss', 'ce', '--seed', 1)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert [h['test_top1'] for h in res['history']] == [10.0, 10.0, 10.1]
    assert res['params']['loss'] == 'ce' and res['class_counts'] == cifar_lt_counts(7, 10, 100)
    assert (tmp_path / 'out' / 'work' / 'log' / 'cifar10_resnet32_CE_None_exp_0.01_seed1').is_dir()
    assert (tmp_path / 'out' / 'log_test.csv').exists() and (tmp_path / 'out' / 'work' / 'cifar').is_dir()
