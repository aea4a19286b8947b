"""The sweep on a real SLURM (`--launcher slurm`, through submitit): start the one-node cluster first with
`sudo tests/slurm_up.sh` (CI does). A 2-row synthetic-lt sweep through SLURM gives the results of the same sweep run
here, bit for bit; running the command again recognises finished, queued/running and failed runs and submits only
what is missing; a failed job is reported with the last lines of its log."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.core import RESULTS
from fake_training import write_fake_train_notebook
from test_sweep import sweep_cli, finished
from test_sweep_jobs import computed

pytestmark = pytest.mark.skipif(
    shutil.which('sbatch') is None,
    reason='!!! SLURM NOT TESTED: sbatch is not installed here. Start a one-node SLURM with `sudo tests/slurm_up.sh` '
           '(CI must run it before pytest) !!!')

SLURM = ('--launcher', 'slurm', '--gpus-per-run', 0, '--cpus-per-gpu', 1, '--time', 20, '--poll', 2)

@pytest.fixture(scope='module', autouse=True)
def cluster_is_up():
    r = subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split(), f'sbatch is here but no SLURM answers (sinfo: {r.stderr.strip()}): ' \
                                                   'start it with `sudo tests/slurm_up.sh`'

@pytest.mark.slow
def test_slurm_sweep_equals_the_local_sweep(tmp_path):
    common = ('--table', 'bench', '--rows', 'ce', 'ala', '--seeds', 0, '--param', 'epochs=2', '--quiet')
    r = sweep_cli(*common, '--runs-dir', tmp_path/'slurm', *SLURM, cwd=tmp_path)
    assert r.returncode == 0 and '2 ran, 0 skipped, 0 failed' in r.stdout, r.stdout + r.stderr
    jobs = [l.split('submitted as SLURM job ')[1] for l in r.stdout.splitlines() if 'submitted as SLURM job' in l]
    assert len(jobs) == 2 and len({j.split('_')[0] for j in jobs}) == 1, r.stdout        # one job array
    local = sweep_cli(*common, '--runs-dir', tmp_path/'local', cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})
    assert local.returncode == 0, local.stdout + local.stderr
    runs = finished(tmp_path/'slurm')
    assert runs == finished(tmp_path/'local') and len(runs) == 2
    for run in runs:
        (a, la), (b, lb) = computed(tmp_path/'slurm', run), computed(tmp_path/'local', run)
        assert a == b, run
        assert la.tobytes() == lb.tobytes(), run
        log = (tmp_path/'slurm'/run/'train.log').read_text()
        assert '--- SLURM job ' in log and 'epoch 2/2' in log, log                      # the job's lines, in its folder
    r = sweep_cli(*common, '--runs-dir', tmp_path/'slurm', *SLURM, cwd=tmp_path)
    assert '0 ran, 2 skipped' in r.stdout and 'submitted' not in r.stdout

def test_slurm_rerun_submits_only_what_is_missing_and_reports_a_failed_job(tmp_path):
    nb = write_fake_train_notebook(tmp_path/'fake_train.ipynb')
    args = ('--table', 'bench', '--rows', 'df', 'ala', '--seeds', 0, '--runs-dir', tmp_path/'runs', '--notebook', nb,
            *SLURM)
    fail_df = {'FAKE_TRAIN_FAIL_LOSS': 'df'}
    r = sweep_cli(*args, '--no-wait', cwd=tmp_path, env=fail_df)
    assert r.returncode == 0 and r.stdout.count('submitted as SLURM job') == 2, r.stdout + r.stderr
    assert '2 in the SLURM queue' in r.stdout
    r = sweep_cli(*args, cwd=tmp_path, env=fail_df)                       # the same command again: waits for them
    assert r.stdout.count('not submitted again') == 2 and 'submitted as' not in r.stdout, r.stdout + r.stderr
    assert r.returncode == 1 and '1 ran, 0 skipped, 1 failed' in r.stdout, r.stdout
    failed = r.stdout[r.stdout.index('FAILED'):]
    assert 'ended without results.json; the last lines of' in failed and 'train.log' in failed
    assert 'this run fails on purpose' in failed, failed                  # the log's last lines, in the report
    r = sweep_cli(*args, cwd=tmp_path)                                    # only the failed run is submitted again
    assert r.returncode == 0 and '1 ran, 1 skipped, 0 failed' in r.stdout, r.stdout + r.stderr
    assert 'ended without results.json, submitting it again' in r.stdout and r.stdout.count('submitted as') == 1
    assert (tmp_path/'runs/bench/df/resnet8/seed0/calls.log').read_text() == 'resume=False\n' * 2
    assert json.loads((tmp_path/'runs/bench/df/resnet8/seed0/slurm.json').read_text())['job_id']

@pytest.mark.slow
def test_a_requeued_job_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(tmp_path):
    "What a preemption does to a job (`scontrol requeue`: killed, queued again, run again): the run resumes exactly."
    common = ('--table', 'bench', '--rows', 'ala', '--seeds', 0, '--param', 'epochs=4', '--quiet')
    runs = tmp_path/'slurm'
    r = sweep_cli(*common, '--runs-dir', runs, *SLURM, '--no-wait', cwd=tmp_path)
    assert r.returncode == 0 and 'submitted as SLURM job' in r.stdout, r.stdout + r.stderr
    (record,) = runs.rglob('slurm.json')
    folder, job = record.parent, json.loads(record.read_text())['job_id']
    deadline = time.time() + 600
    while not (folder/'checkpoint.pt').is_file():
        assert time.time() < deadline and not (folder/RESULTS).exists(), 'no checkpoint before the run ended'
        time.sleep(0.05)
    subprocess.run(['scontrol', 'requeue', job], check=True, timeout=60)          # preempted after a checkpoint
    assert not (folder/RESULTS).exists(), 'the run finished before the requeue: the test proves nothing'
    for _ in range(120):              # SLURM holds a requeued job for a while: start it now once it is pending again
        state = subprocess.run(['squeue', '-h', '-j', job, '-o', '%T'], capture_output=True, text=True).stdout.strip()
        if state == 'PENDING':
            subprocess.run(['scontrol', 'update', f'jobid={job}', 'StartTime=now'], timeout=60)
            break
        time.sleep(0.5)
    r = sweep_cli(*common, '--runs-dir', runs, *SLURM, cwd=tmp_path)
    assert r.returncode == 0 and 'not submitted again' in r.stdout and '1 ran' in r.stdout, r.stdout + r.stderr
    log = (folder/'train.log').read_text()
    assert log.count('--- SLURM job') == 2 and 'resuming ' in log, log
    local = sweep_cli(*common, '--runs-dir', tmp_path/'local', cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})
    assert local.returncode == 0, local.stdout + local.stderr
    (run,) = finished(runs)
    (a, la), (b, lb) = computed(runs, run), computed(tmp_path/'local', run)
    assert a['params'].pop('resume') and not b['params'].pop('resume')
    assert a == b and la.tobytes() == lb.tobytes()

def test_damaged_job_records_are_named_and_their_runs_submitted(tmp_path):
    nb = write_fake_train_notebook(tmp_path/'fake_train.ipynb')
    records, rows = [b'', b'{"job_id": "12', b'[1, 2]', b'{"job": 3}'], ['ce', 'focal', 'qf', 'df']
    args = ('--table', 'bench', '--rows', *rows, '--seeds', 0, '--runs-dir', tmp_path/'runs', '--notebook', nb, *SLURM)
    from ala_paper.sweep import plan
    folders = [e.out_dir for e in plan('bench', None, [0], tmp_path/'runs', rows)]
    for folder, record in zip(folders, records):
        folder.mkdir(parents=True)
        (folder/'slurm.json').write_bytes(record)
    r = sweep_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and '4 ran, 0 skipped, 0 failed' in r.stdout, r.stdout + r.stderr
    for folder in folders:
        (line,) = [l for l in r.stdout.splitlines() if f"{folder/'slurm.json'} " in l]
        assert line.endswith("(if its job still runs, the run's lock keeps them from training it at once)"), line
        assert json.loads((folder/'slurm.json').read_text())['job_id']             # a new record for the new job
