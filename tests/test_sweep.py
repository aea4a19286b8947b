"""The sweep CLI end to end through papermill, with a stand-in for nbs/train.ipynb that writes a
contract-conformant results.json at once (no training): runs, skips finished runs, resumes unfinished ones,
recognises a run shared between tables, reports failures and bad input."""
import json, os, subprocess, sys
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.sweep import plan, TABLES

FAKE_TRAIN = '''
import json, os
from pathlib import Path
from ala_paper.report import fake_results
o = Path(out_dir); o.mkdir(parents=True, exist_ok=True)
if resume and not (o/'checkpoint.pt').is_file(): raise ValueError('resume without a checkpoint')
if loss == fail_loss: raise RuntimeError('this run fails on purpose')
res = fake_results(loss, seed, dataset)
res['params'].update(out_dir=str(o), resume=resume, **({'epochs': epochs} if epochs else {}))
with open(o/'calls.log', 'a') as f: f.write(f'resume={resume}\\n')
(o/'results.json').write_text(json.dumps(res))
'''

@pytest.fixture
def fake_nb(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("dataset = 'synthetic-lt'\nloss = 'ala'\nseed = 0\nout_dir = 'runs/default'\n"
                                       "resume = False\nepochs = None\nfail_loss = 'none'")
    params.metadata['tags'] = ['parameters']
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_TRAIN)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    p = tmp_path/'fake_train.ipynb'; nbformat.write(nb, p)
    return p

def sweep_cli(*args, cwd):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    return subprocess.run([sys.executable, '-m', 'ala_paper.sweep', *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)

def test_sweep_runs_skips_resumes_and_shares(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    r = sweep_cli('--table', 'table3', '--seeds', 0, 1, '--runs-dir', runs, '--notebook', fake_nb, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    done = sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob('results.json'))
    assert done == [f'table3/{k}/seed{s}' for k in ('ala', 'balanced-softmax', 'ce', 'focal') for s in (0, 1)]
    assert (runs/'table3/ce/seed0/train.ipynb').is_file() and (runs/'table3/ce/seed0/sweep.json').is_file()
    assert json.loads((runs/'table3/focal/seed1/results.json').read_text())['loss'] == 'focal'
    assert '8 ran, 0 skipped, 0 failed' in r.stdout
    # again: everything is finished
    r = sweep_cli('--table', 'table3', '--seeds', 0, 1, '--runs-dir', runs, '--notebook', fake_nb, cwd=tmp_path)
    assert '0 ran, 8 skipped' in r.stdout and (runs/'table3/ce/seed0/calls.log').read_text() == 'resume=False\n'
    # a run killed after a checkpoint is resumed
    o = runs/'table3/ala/seed2'; o.mkdir(parents=True); (o/'checkpoint.pt').write_bytes(b'')
    r = sweep_cli('--table', 'table3', '--rows', 'ala', '--seeds', 2, '--runs-dir', runs, '--notebook', fake_nb, cwd=tmp_path)
    assert r.returncode == 0 and 'resuming' in r.stdout and (o/'calls.log').read_text() == 'resume=True\n'
    # Table 1's CE and ALA are Table 3's (same parameters): shared, not rerun
    pl = plan('table1', 'synthetic-lt', [0], runs, rows=['ce', 'ala', 'focal', 'logit-adjust'])
    assert {e.row: e.state for e in pl} == {'ce': 'shared', 'ala': 'shared', 'focal': 'shared', 'logit-adjust': 'new'}
    r = sweep_cli('--table', 'table1', '--rows', 'ce', 'logit-adjust', '--seeds', 0, '--runs-dir', runs,
                  '--notebook', fake_nb, cwd=tmp_path)
    assert 'same run as' in r.stdout and '1 ran, 1 skipped' in r.stdout
    assert not (runs/'table1/ce').exists() and (runs/'table1/logit-adjust/seed0/results.json').is_file()

def test_params_pass_through_and_failures_are_reported(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    r = sweep_cli('--table', 'table4', '--rows', 'ce', 'qf', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
                  '--param', 'epochs=2', '--param', 'fail_loss=qf', cwd=tmp_path)
    assert r.returncode == 1 and 'FAILED' in r.stdout and '1 ran, 0 skipped, 1 failed' in r.stdout
    assert json.loads((runs/'table4/ce/seed0/results.json').read_text())['params']['epochs'] == 2
    assert not (runs/'table4/qf/seed0/results.json').exists()

def test_dry_run_prints_papermill_commands(tmp_path, fake_nb):
    r = sweep_cli('--table', 'table4', '--seeds', 0, 1, 2, '--runs-dir', 'runs', '--notebook', fake_nb, '--dry-run', cwd=tmp_path)
    lines = [l for l in r.stdout.splitlines() if 'would run' in l]
    assert r.returncode == 0 and len(lines) == 18
    assert f'papermill {fake_nb} runs/table4/ala/seed2/train.ipynb -p dataset synthetic-lt -p loss ala -p seed 2' in lines[-1]
    assert not (tmp_path/'runs').exists()

@pytest.mark.parametrize('args,msg', [
    (['--table', 'table9'], 'unknown table'),
    (['--table', 'table4', '--rows', 'oltr'], "table4 has no row 'oltr'"),
    (['--table', 'table4', '--param', 'loss=ce'], 'set by the sweep itself'),
    (['--table', 'table4', '--param', 'epochs'], 'NAME=VALUE'),
    (['--table', 'table4', '--notebook', 'missing.ipynb'], 'not found'),
])
def test_bad_input(tmp_path, fake_nb, args, msg):
    if '--notebook' not in args: args = [*args, '--notebook', fake_nb]
    r = sweep_cli(*args, '--runs-dir', tmp_path/'runs', cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith('error: ') and msg in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

def test_rows_cover_the_issue():
    assert [r.loss for r in TABLES['table4'].rows] == ['ce', 'ldam', 'df', 'qf', 'df-ldam', 'ala']
    assert {r.loss for r in TABLES['table1'].rows} == {'ce', 'focal', 'ldam', 'logit-adjust', 'balanced-softmax', 'ala'}
