"""The sweep CLI end to end through papermill, with a stand-in for nbs/train.ipynb that writes a fake finished run at
once (no training): runs both backbones of Table 1 in distinct folders, skips finished runs, resumes unfinished ones,
recognises a run shared between tables or left by an older sweep, keeps recipes apart, reports failures and bad
input."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.core import CHECKPOINT, RESULTS
from ala_paper.losses import LOSSES
from ala_paper.report import load_paper
from ala_paper.sweep import TABLES, plan
from fake_training import write_fake_train_notebook

@pytest.fixture
def fake_nb(tmp_path):
    return write_fake_train_notebook(tmp_path/'fake_train.ipynb')

def sweep_cli(*args, cwd, env=None):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), **(env or {})}
    return subprocess.run([sys.executable, '-m', 'ala_paper.sweep', *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)

def finished(runs):
    return sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob(RESULTS))

def test_sweep_runs_skips_resumes_and_shares(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    r = sweep_cli('--table', 'table3', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert finished(runs) == [f'table3/{k}/resnet152/seed0' for k in ('ala', 'balanced-softmax', 'ce', 'focal')]
    assert 'pc-softmax: post-hoc, read from the ce runs' in r.stdout and '4 ran, 0 skipped, 0 failed' in r.stdout
    assert '\n    fake epoch 1/1 of ce\n' in r.stdout          # each run's own lines, indented under the sweep's
    assert (runs/'table3/ce/resnet152/seed0/train.ipynb').is_file()
    assert json.loads((runs/'table3/ce/resnet152/seed0/sweep.json').read_text())['arch'] == 'resnet152'
    r = sweep_cli('--table', 'table3', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb, cwd=tmp_path)
    assert '0 ran, 4 skipped' in r.stdout and (runs/'table3/ce/resnet152/seed0/calls.log').read_text() == 'resume=False\n'
    o = runs/'table3/ala/resnet152/seed2'                                # a run killed after a checkpoint
    o.mkdir(parents=True)
    (o/CHECKPOINT).write_bytes(b'checkpoint')
    r = sweep_cli('--table', 'table3', '--rows', 'ala', '--seeds', 2, '--runs-dir', runs, '--notebook', fake_nb,
                  '--quiet', cwd=tmp_path)
    assert 'fake epoch' not in r.stdout
    assert r.returncode == 0 and 'resuming' in r.stdout and (o/'calls.log').read_text() == 'resume=True\n'

def test_table1_runs_both_backbones_and_table4_shares_x50(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    r = sweep_cli('--table', 'table1', '--rows', 'ce', 'pc-softmax', '--seeds', 0, '--runs-dir', runs,
                  '--notebook', fake_nb, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert finished(runs) == ['table1/ce/resnet50/seed0', 'table1/ce/resnext50_32x4d/seed0']
    assert json.loads((runs/'table1/ce/resnet50/seed0/results.json').read_text())['params']['arch'] == 'resnet50'
    r = sweep_cli('--table', 'table4', '--rows', 'ce', 'df', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
                  cwd=tmp_path)
    assert 'same run as' in r.stdout and 'table1/ce/resnext50_32x4d/seed0' in r.stdout and '1 ran, 1 skipped' in r.stdout
    assert not (runs/'table4/ce').exists()
    r = sweep_cli('--table', 'table1', '--backbones', 'R-50', '--rows', 'ce', '--seeds', 0, '--runs-dir', runs,
                  '--notebook', fake_nb, cwd=tmp_path)
    assert '0 ran, 1 skipped' in r.stdout

def test_an_older_sweeps_run_is_recognised(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    sweep_cli('--table', 'bench', '--rows', 'ce', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb, cwd=tmp_path)
    old = runs/'table4'/'ce'/'seed0'                                    # the layout of sweeps before the arch level
    shutil.move(runs/'bench/ce/resnet8/seed0', old)
    assert [(e.state, e.note) for e in plan('bench', 'synthetic-lt', [0], runs, ['ce'])] == [('shared', str(old))]

def test_recipes_get_their_own_folders(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    common = ('--table', 'table4', '--rows', 'ala', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb)
    assert sweep_cli(*common, cwd=tmp_path).returncode == 0
    r = sweep_cli(*common, '--param', "loss_kw={'qf_norm': 'ln2'}", cwd=tmp_path)
    assert r.returncode == 0 and '1 ran' in r.stdout
    r = sweep_cli(*common, '--param', 'epochs=2', cwd=tmp_path)
    assert r.returncode == 0 and '1 ran' in r.stdout
    done = finished(runs)
    assert len(done) == 3 and done[-1] == 'table4/ala/resnext50_32x4d/seed0'
    tags = sorted(Path(d).parent.name for d in done[:2])
    assert tags[0].startswith('epochs-2-') and tags[1].startswith('qf_norm-ln2-')
    ln2 = json.loads((runs/done[1]/RESULTS).read_text())['params']
    assert ln2['loss_kw'] == {'qf_norm': 'ln2'}
    assert [e.out_dir for e in plan('table4', None, [0], runs, ['ala'], {'loss_kw': {'qf_norm': 'ln2'}})] == [runs/done[1]]

def test_a_folder_holding_another_recipe_is_left_alone(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    entry = plan('table3', None, [0], runs, ['ce'])[0]
    entry.out_dir.mkdir(parents=True)
    foreign = json.dumps({'params': {'dataset': 'places-lt', 'loss': 'ce', 'arch': 'resnet152', 'seed': 0, 'epochs': 3}, 'top1': {'all': 1.0}})
    (entry.out_dir/RESULTS).write_text(foreign)
    r = sweep_cli('--table', 'table3', '--rows', 'ce', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
                  cwd=tmp_path)
    assert r.returncode == 1 and 'epochs=3 (planned 30)' in r.stdout and 'move it away' in r.stdout
    assert (entry.out_dir/RESULTS).read_text() == foreign

def test_params_pass_through_and_failures_are_reported(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    r = sweep_cli('--table', 'bench', '--rows', 'ce', 'qf', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
                  '--param', 'epochs=2', cwd=tmp_path, env={'FAKE_TRAIN_FAIL_LOSS': 'qf'})
    assert r.returncode == 1 and 'FAILED' in r.stdout and '1 ran, 0 skipped, 1 failed' in r.stdout
    (done,) = finished(runs)
    assert json.loads((runs/done/RESULTS).read_text())['params']['epochs'] == 2 and '/ce/resnet8/epochs-2-' in f'/{done}'

def test_dry_run_of_table1_plans_both_backbones_in_distinct_folders(tmp_path, fake_nb):
    r = sweep_cli('--table', 'table1', '--seeds', 0, '--runs-dir', 'runs', '--notebook', fake_nb, '--dry-run',
                  '--param', 'data_root=/data/imagenet', cwd=tmp_path)
    lines = [l for l in r.stdout.splitlines() if 'would run' in l]
    assert r.returncode == 0 and len(lines) == 12                          # 6 trained rows x 2 backbones
    folders = [l.split(' would run: ')[0].split('] ')[1].rstrip(':') for l in lines]
    assert len(set(folders)) == 12 and {f.split('/')[2] for f in folders} == {'resnet50', 'resnext50_32x4d'}
    assert (f'papermill {fake_nb} runs/table1/ala/resnext50_32x4d/seed0/train.ipynb -p dataset imagenet-lt '
            f'-p data_root /data/imagenet -p loss ala -p arch resnext50_32x4d -p seed 0') in lines[-1]
    assert not (tmp_path/'runs').exists()

def test_importing_the_sweep_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None; import ala_paper.sweep, ala_paper.launch; "
            "from ala_paper.core import project_root; print(project_root(), 'ala_paper.train' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f'{ROOT} False', r.stderr

@pytest.mark.parametrize('args,msg', [
    (['--table', 'table9'], "unknown table 'table9'"),
    (['--table', 'table4', '--rows', 'oltr'], "table4 has no row 'oltr'"),
    (['--table', 'table4', '--param', 'loss=ce'], 'is set by the sweep: use --table'),
    (['--table', 'table4', '--param', 'epochs'], 'NAME=VALUE'),
    (['--table', 'table4', '--notebook', 'missing.ipynb'], 'not found'),
    (['--table', 'table1', '--param', 'arch=resnet152'], 'pick them with --backbones'),
    (['--table', 'table1', '--backbones', 'R-152'], "table1 has no backbone 'R-152'"),
    (['--table', 'table1', '--dataset', 'cifar10-lt'], 'use --table bench for other datasets'),
    (['--table', 'bench', '--dataset', 'mnist-lt'], "unknown dataset 'mnist-lt'"),
    (['--table', 'bench', '--param', 'epochs=0'], 'epochs must be an integer >= 1'),
    (['--table', 'bench', '--param', 'colour=red'], "unknown parameter 'colour'"),
    (['--table', 'bench', '--backbones', 'resnet9'], 'bench has no backbone columns'),
    (['--table', 'bench', '--param', 'data_root={tmp}/nope'], 'nope is not a folder here'),
    (['--table', 'bench', '--runs-dir', '{tmp}/file/runs'], 'file is a file, not a folder'),
])
def test_bad_input(tmp_path, fake_nb, args, msg):
    (tmp_path/'file').write_text('')
    args = [a.replace('{tmp}', str(tmp_path)) for a in args]
    if '--notebook' not in args: args = [*args, '--notebook', fake_nb]
    if '--runs-dir' not in args: args = [*args, '--runs-dir', tmp_path/'runs']
    r = sweep_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith('error: ') and msg in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

def test_rows_name_printed_methods_and_known_losses():
    paper = load_paper()
    for name, spec in TABLES.items():
        keys = [r.key for r in spec.rows]
        assert len(keys) == len(set(keys)), name
        for row in spec.rows:
            assert row.loss in LOSSES, (name, row)
            if row.posthoc: assert next(r for r in spec.rows if r.key == row.posthoc).loss == 'ce', (name, row)
            table, method = row.paper or (None, None) if name == 'bench' else (name, row.method)
            if table: assert method in set(paper[paper.table == table].method), (name, row)
        if spec.dataset: assert set(spec.backbones) == set(paper[paper.table == name].backbone), name
