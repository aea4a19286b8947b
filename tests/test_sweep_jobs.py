"""The sweep beyond one run at a time on one machine: `--jobs N` (N runs at once, each bit-identical to the same run
alone), the run folder's lock (two sweeps on one runs folder never train a run twice at once; a lock left by a
process killed with SIGKILL does not block), and damaged files in a runs folder (named in one line, the sweep goes
on with the other runs)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.core import CHECKPOINT, RESULTS
from ala_paper.launch import LOCK
from ala_paper.sweep import plan
from fake_training import write_fake_train_notebook
from test_sweep import sweep_cli, finished

@pytest.fixture
def fake_nb(tmp_path):
    return write_fake_train_notebook(tmp_path/'fake_train.ipynb')

def numbers(results: dict) -> dict:
    "What a run computed: results.json without its timings, paths and environment."
    drop = {'seconds', 'train_seconds', 'images_per_second', 'env', 'out_dir'}
    def strip(x):
        if isinstance(x, dict): return {k: strip(v) for k, v in x.items() if k not in drop}
        if isinstance(x, list): return [strip(v) for v in x]
        return x
    return strip(results)

def computed(runs, run):
    res = json.loads((runs/run/RESULTS).read_text())
    return numbers(res), np.load(runs/run/res['test_logits']['file'])

THREADS_EACH = str(max(1, len(os.sched_getaffinity(0)) // 2))   # what --jobs 2 gives each run

@pytest.mark.slow
def test_jobs_2_runs_two_at_once_each_bit_identical_to_the_run_alone(tmp_path):
    common = ('--table', 'bench', '--rows', 'ce', 'ala', '--seeds', 0, '--param', 'epochs=2', '--quiet')
    r = sweep_cli(*common, '--runs-dir', tmp_path/'together', '--jobs', 2, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"2 runs at once on the CPU, {THREADS_EACH} CPU thread{'s' * (THREADS_EACH != '1')} each" in lines
    started = [i for i, l in enumerate(lines) if ': running on the CPU' in l]
    ended = [i for i, l in enumerate(lines) if ': done in ' in l]
    assert len(started) == len(ended) == 2 and max(started) < min(ended), r.stdout   # both started before one ended
    assert '2 ran, 0 skipped, 0 failed' in r.stdout
    alone = sweep_cli(*common, '--runs-dir', tmp_path/'alone', cwd=tmp_path, env={'OMP_NUM_THREADS': THREADS_EACH})
    assert alone.returncode == 0, alone.stdout + alone.stderr
    runs = finished(tmp_path/'together')
    assert runs == finished(tmp_path/'alone') and len(runs) == 2
    for run in runs:
        (a, la), (b, lb) = computed(tmp_path/'together', run), computed(tmp_path/'alone', run)
        assert a == b, run                                       # every number of results.json, bit for bit
        assert la.tobytes() == lb.tobytes(), run                 # and the saved test logits
        assert (tmp_path/'together'/run/'train.log').read_text().count('epoch') >= 2

def hold_lock(folder):
    "A process that holds the lock of `folder` until killed."
    code = f'from ala_paper.launch import run_lock\nimport time\nwith run_lock({str(folder)!r}): print("held", flush=True); time.sleep(900)'
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert p.stdout.readline() == 'held\n'
    return p

@pytest.mark.parametrize('jobs', [1, 2])
def test_a_run_being_trained_is_not_trained_again_and_a_dead_holders_lock_does_not_block(tmp_path, fake_nb, jobs):
    runs = tmp_path/'runs'
    args = ('--table', 'bench', '--rows', 'ce', 'qf', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
            '--jobs', jobs)
    ce = plan('bench', None, [0], runs, ['ce'])[0].out_dir
    holder = hold_lock(ce)
    try:
        r = sweep_cli(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f'being trained by pid {holder.pid} on ' in r.stdout and ': skipped' in r.stdout
        assert '1 ran, 0 skipped, 0 failed, 1 being trained by another sweep' in r.stdout
        assert not (ce/'calls.log').exists() and not (ce/RESULTS).exists()
    finally:
        holder.kill()                                             # SIGKILL: no chance to release anything
        holder.wait()
    assert f'pid {holder.pid}' in (ce/LOCK).read_text()            # the file stays, naming its dead holder
    r = sweep_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and '1 ran, 1 skipped, 0 failed' in r.stdout, r.stdout + r.stderr
    assert (ce/'calls.log').read_text() == 'resume=False\n'

def test_two_sweeps_at_once_on_one_runs_folder_train_each_run_once(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    rows = ('ce', 'focal', 'qf', 'df', 'ala', 'ldam')
    args = ['--table', 'bench', '--rows', *rows, '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb]
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    procs = [subprocess.Popen([sys.executable, '-m', 'ala_paper.sweep', *map(str, args + extra)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for extra in (['--jobs', '2'], [])]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(finished(runs)) == len(rows)
    for run in finished(runs): assert (runs/run/'calls.log').read_text() == 'resume=False\n', (run, outs)

def test_jobs_report_a_failed_run_with_the_last_lines_of_its_log(tmp_path, fake_nb):
    r = sweep_cli('--table', 'bench', '--rows', 'ce', 'qf', '--seeds', 0, '--runs-dir', tmp_path/'runs', '--notebook',
                  fake_nb, '--jobs', 2, cwd=tmp_path, env={'FAKE_TRAIN_FAIL_LOSS': 'qf'})
    assert r.returncode == 1 and '1 ran, 0 skipped, 1 failed' in r.stdout, r.stdout + r.stderr
    failed = next(l for l in r.stdout.splitlines() if 'FAILED' in l)
    assert 'qf' in failed and 'exit status 1; the last lines of' in failed and 'train.log' in failed
    assert '| error: PapermillExecutionError: RuntimeError: this run fails on purpose' in r.stdout

DAMAGED = {'empty': b'', 'blank': b'  \n', 'cut short': b'{"params": {"dataset": "synthetic-lt", "loss": "ce", "ar',
           'binary': bytes(range(256)), 'a list': b'[1, 2, 3]', 'another format': b'{"accuracy": 0.91, "epochs": 3}',
           'no top1': b'{"params": {"dataset": "synthetic-lt"}}', 'a folder': None}

def damage(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None: path.mkdir()
    else: path.write_bytes(data)

def test_damaged_results_json_files_are_named_and_the_sweep_goes_on(tmp_path, fake_nb):
    "Each kind of damage in a planned run's own results.json and in another folder of the runs folder: one sweep."
    runs = tmp_path/'runs'
    rows = ('ce', 'focal', 'cb-focal', 'ce-drw', 'logit-adjust', 'balanced-softmax', 'ldam', 'ldam-drw')
    planned = plan('bench', None, [0], runs, [*rows, 'ala'])
    assert len(planned) == len(DAMAGED) + 1
    for entry, data in zip(planned, DAMAGED.values()):
        damage(entry.out_dir/RESULTS, data)                           # the planned run's own results.json
        damage(runs/'old'/entry.row/RESULTS, data)                    # some other file in the runs folder
    r = sweep_cli('--table', 'bench', '--rows', *rows, 'ala', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
                  '--quiet', cwd=tmp_path)
    assert r.returncode == 1 and f'1 ran, 0 skipped, {len(DAMAGED)} failed' in r.stdout, r.stdout + r.stderr
    assert 'Traceback' not in r.stdout + r.stderr
    for entry, (case, data) in zip(planned, DAMAGED.items()):
        (mine,) = [l for l in r.stdout.splitlines() if f'{entry.out_dir/RESULTS} ' in l]
        assert mine.endswith(': move it away or delete it to train this run'), (case, mine)
        (theirs,) = [l for l in r.stdout.splitlines() if f"{runs/'old'/entry.row/RESULTS} " in l]
        assert theirs.endswith(': ignored (move it away or delete it)'), (case, theirs)
        own = entry.out_dir/RESULTS
        assert (own.read_bytes() == data) if data is not None else own.is_dir(), case          # left as it was
        assert not (entry.out_dir/'calls.log').exists(), case
    assert (planned[-1].out_dir/'calls.log').read_text() == 'resume=False\n'
    print(r.stdout)

def test_an_empty_checkpoint_is_named_and_a_good_one_resumes(tmp_path, fake_nb):
    runs = tmp_path/'runs'
    ce, qf = (e.out_dir for e in plan('bench', None, [0], runs, ['ce', 'qf']))
    damage(ce/CHECKPOINT, b'')                                               # a job killed while writing it
    damage(qf/CHECKPOINT, b'a checkpoint')
    r = sweep_cli('--table', 'bench', '--rows', 'ce', 'qf', '--seeds', 0, '--runs-dir', runs, '--notebook', fake_nb,
                  '--quiet', cwd=tmp_path)
    assert r.returncode == 1 and f'{ce/CHECKPOINT} is empty or not a file: delete it to start this run afresh' in r.stdout
    assert (qf/'calls.log').read_text() == 'resume=True\n' and not (ce/'calls.log').exists()

@pytest.mark.parametrize('record', [None, b'', b'{"params": {"seed": 0}', b'{"table": "bench"}'])
def test_run_one_with_a_missing_or_damaged_plan_says_so(tmp_path, fake_nb, record):
    folder = tmp_path/'run'
    folder.mkdir()
    if record is not None: (folder/'sweep.json').write_bytes(record)
    r = sweep_cli('--run-one', folder, '--notebook', fake_nb, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout.strip().splitlines() == [
        f"error: ValueError: {folder/'sweep.json'} is missing or damaged: run the sweep again to plan this run"], r.stdout

@pytest.mark.parametrize('args,msg', [
    (['--table', 'bench', '--jobs', '0'], '--jobs 0: give the number of runs at once, 1 or more'),
    (['--table', 'bench', '--launcher', 'slurm', '--jobs', '2'], '--jobs is for --launcher local'),
    (['--table', 'bench', '--launcher', 'slurm', '--time', 'soon'], "--time 'soon' is not a SLURM time limit"),
    (['--table', 'bench', '--launcher', 'slurm', '--gpus-per-run', '-1'], '--gpus-per-run must be >= 0'),
    (['--rows', 'ce'], 'no --table given: use one of table1'),
])
def test_bad_launcher_input(tmp_path, fake_nb, args, msg):
    r = sweep_cli(*args, '--notebook', fake_nb, '--runs-dir', tmp_path/'runs', cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith('error: ') and msg in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

SLOW_TRAIN = '''
import os, time
from pathlib import Path
o = Path(out_dir)
(o/'kernel.pid').write_text(str(os.getpid()))
time.sleep(600)
'''

def alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    return Path(f'/proc/{pid}/status').read_text().find('State:\tZ') < 0      # a zombie has ended

@pytest.mark.parametrize('how', ['SIGINT', 'SIGTERM'])   # Ctrl-C; kill or a scheduler
def test_interrupting_a_jobs_sweep_stops_every_run_and_leaves_no_process(tmp_path, how):
    import nbformat
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("dataset = 'synthetic-lt'\nloss = 'ala'\nseed = 0\nout_dir = 'x'\nresume = False")
    params.metadata['tags'] = ['parameters']
    nb.cells = [params, nbformat.v4.new_code_cell(SLOW_TRAIN)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, tmp_path/'slow.ipynb')
    runs = tmp_path/'runs'
    sweep = subprocess.Popen([sys.executable, '-m', 'ala_paper.sweep', '--table', 'bench', '--rows', 'ce', 'qf',
                              '--runs-dir', str(runs), '--notebook', str(tmp_path/'slow.ipynb'), '--jobs', '2'],
                             cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(ROOT)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             # a shell's background job (`cmd &`) inherits SIGINT ignored; Ctrl-C reaches a foreground one
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folders = [e.out_dir for e in plan('bench', None, [0], runs, ['ce', 'qf'])]
    deadline = time.time() + 300
    while not all((f/'kernel.pid').is_file() for f in folders):
        assert time.time() < deadline and sweep.poll() is None, sweep.communicate()
        time.sleep(0.5)
    kernels = [int((f/'kernel.pid').read_text()) for f in folders]
    workers = [int((f/LOCK).read_text().split()[1]) for f in folders]
    sweep.send_signal(getattr(signal, how))
    try: out, err = sweep.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in [sweep.pid] + workers + kernels:
            if alive(pid): os.kill(pid, signal.SIGKILL)        # leave nothing training behind a failed test
        raise AssertionError('the sweep did not stop within 120 s of Ctrl-C')
    assert sweep.returncode == 130 and 'interrupted: the runs under way were stopped' in err, out + err
    assert 'Traceback' not in err
    time.sleep(3)
    assert not any(alive(pid) for pid in workers + kernels), (workers, kernels)   # no training left behind
    for f in folders: assert 'stopped (SIGTERM or Ctrl-C)' in (f/'train.log').read_text()
