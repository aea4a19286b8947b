"""Training engine end to end on the CPU: the papermill main job, torchrun/DDP, exact resume after SIGKILL,
bad inputs (CLI exit 2 + one line, no results.json), and one epoch on large-class-count trees in the real formats."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from ala_paper.fixtures import fixture_counts, make_inat_tree, make_split_list_tree
from ala_paper.core import CHECKPOINT, project_root
from ala_paper.engine import resolve_params
from ala_paper.train import train

ROOT = project_root()
ENV = {**os.environ, 'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'), 'PYTHONUNBUFFERED': '1'}
ENV.pop('IN_TEST', None)
CLI = [sys.executable, '-m', 'ala_paper.train']
GROUPS = {'all', 'many', 'medium', 'few'}


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def results(d):
    return json.loads((Path(d) / 'results.json').read_text())


def check_results(r, epochs):
    C = len(r['class_counts'])
    assert len(r['class_names']) == len(r['per_class_acc']) == C
    assert set(r['top1']) == GROUPS and [h['epoch'] for h in r['history']] == list(range(1, epochs + 1))
    assert len(r['test_targets']) == len(r['true_class_prob']) and all(0 <= p <= 1 for p in r['true_class_prob'])
    for k in ('params', 'dataset', 'loss', 'meta', 'seconds', 'images_per_second', 'env'):
        assert k in r, k
    assert {'python', 'torch', 'device', 'world_size', 'git_commit'} <= set(r['env'])


# --- the main job ------------------------------------------------------------------------------------

def test_papermill_default_run_from_another_cwd(tmp_path):
    "The real default (synthetic-lt + ALA, full preset), as a user runs it, from a directory outside the repo."
    out = tmp_path / 'run'
    t0 = time.time()
    subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'train.ipynb'), str(tmp_path / 'out.ipynb'),
                    '-p', 'out_dir', str(out)], check=True, cwd=tmp_path, env=ENV, capture_output=True, timeout=900)
    wall = time.time() - t0
    r = results(out)
    check_results(r, r['params']['epochs'])
    assert r['dataset'] == 'synthetic-lt' and r['loss'] == 'ala' and r['params']['arch'] == 'resnet8'
    assert r['params']['epochs'] == 30 and r['params']['cosine'] and r['env']['world_size'] == 1
    assert all(r['top1'][g] is not None for g in GROUPS)
    assert r['top1']['all'] > 100 / len(r['class_counts']) + 10          # it learned something
    assert set(r['history'][-1]['factors']) == {'many', 'medium', 'few'}
    assert r['history'][-1]['drw'] and not r['history'][0]['drw']
    assert sum(r['meta']['count']) == sum(r['class_counts'])
    nb = json.loads((tmp_path / 'out.ipynb').read_text())
    assert sum(len(json.dumps(c.get('outputs', []))) for c in nb['cells']) < 400_000   # small outputs
    print(f"\ndefault papermill run: {wall:.0f} s wall, train() {r['seconds']:.0f} s, {r['images_per_second']:.0f} img/s")


def test_default_out_dir_is_in_the_project_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_params()['out_dir'] == str(ROOT / 'runs' / 'default')


def test_notebook_raises_the_same_error(tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match="unknown loss 'hinge'; choose one of: ce"):
        pm.execute_notebook(str(ROOT / 'nbs' / 'train.ipynb'), str(tmp_path / 'o.ipynb'), cwd=str(tmp_path),
                            parameters=dict(loss='hinge', out_dir=str(tmp_path / 'run')), progress_bar=False, kernel_name='python3')
    assert not (tmp_path / 'run').exists()


def test_papermill_mistakes_end_in_one_line(tmp_path):
    "From papermill's command line, a misspelt `-p` name and a bad value each end the run with one `error:` line."
    run, out = tmp_path / 'run', tmp_path / 'o.ipynb'
    for args, want in ((['-p', 'epoch', '3'], "error: unknown parameter 'epoch' (did you mean 'epochs'?); valid parameters: nproc, dataset"),
                       (['-p', 'epochs', 'abc'], "error: epochs must be an integer >= 1, got 'abc'"),
                       (['-p', 'nproc', '0'], "error: nproc must be an integer >= 1 (training processes")):
        r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'train.ipynb'), str(out),
                            '-p', 'out_dir', str(run), *args], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=300)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode != 0 and last.startswith(want), (args, r.stderr[-1000:])
        errors = [o for c in json.loads(out.read_text())['cells'] for o in c.get('outputs', []) if o['output_type'] == 'error']
        assert [e['traceback'] for e in errors] == [[last]]       # the saved notebook shows the line, no frames
        assert not run.exists()


# --- several processes ---------------------------------------------------------------------------------

def test_torchrun_two_gloo_processes_write_one_result(tmp_path):
    "run_torchrun (what train.ipynb does for nproc > 1) = `python -m torch.distributed.run --nproc_per_node 2 -m ala_paper.train ...`."
    from ala_paper.cli import run_torchrun
    out = tmp_path / 'ddp'
    ret = run_torchrun(2, epochs=2, out_dir=out, verbose=False)
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, 'results.json', 'test_logits.npy', 'weights.pt']
    assert ret == results(out)
    res = results(out)
    check_results(res, 2)
    assert res['env']['world_size'] == 2 and res['params']['world_size'] == 2
    n_test = len(res['meta']['count']) * res['meta']['test_per_class']
    assert len(res['test_targets']) == n_test                           # every test image once, none twice
    assert res['test_targets'] == sorted(res['test_targets'])            # in dataset order
    per_rank, bs = -(-sum(res['class_counts']) // 2), res['params']['batch_size'] // 2
    assert res['history'][0]['images'] == per_rank // bs * bs * 2          # full batches only, on both processes


def test_class_weighted_gradient_under_ddp_equals_one_process(tmp_path):
    "DRW / cb weights under DDP: the gradient of 2 gloo processes equals one process's on the same global batch."
    sys.path.insert(0, str(ROOT / 'tests'))
    from ddp_weighted_grad import BATCH, WEIGHT, model
    from ala_paper.losses import make_loss
    net = model()
    make_loss('ce', [100, 10, 5, 2], weight=WEIGHT)(net(BATCH['x']), BATCH['y']).backward()
    want = {n: p.grad for n, p in net.named_parameters()}
    got = {}
    for mode in ('global', 'naive'):
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                            str(ROOT / 'tests' / 'ddp_weighted_grad.py'), mode, str(tmp_path / f'{mode}.pt')],
                           env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        got[mode] = torch.load(tmp_path / f'{mode}.pt', weights_only=True)
    assert all(torch.allclose(got['global'][n], want[n], atol=1e-6) for n in want)
    assert not all(torch.allclose(got['naive'][n], want[n], atol=1e-3) for n in want)   # what each rank's own mean gives



@pytest.mark.parametrize('failing', ['0,1', '1'])
def test_unexpected_error_on_a_rank_ends_in_one_line(tmp_path, failing):
    "A non-user error (here a simulated CUDA error) on some ranks: each ends with `error: rank r of 2: ...`, exit != 0."
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(   # runs in every process torchrun starts
        "import os\nfrom ala_paper.transforms import BatchTransform\n"       # the first training step's batch transform fails
        "def boom(self, *a, **kw):\n"
        f"    if os.environ.get('RANK') in {failing.split(',')!r}: raise RuntimeError('CUDA error: an illegal memory access (simulated)')\n"
        "    return _real(self, *a, **kw)\n"
        "_real, BatchTransform.__call__ = BatchTransform.__call__, boom\n")
    env = {**ENV, 'PYTHONPATH': f"{site}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m',
                        'ala_paper.train', '--epochs', '1', '--out_dir', str(tmp_path / 'run'), '--quiet'],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith('error: ')]
    want = {f'error: rank {k} of 2: RuntimeError: CUDA error: an illegal memory access (simulated) (unexpected: traceback above)'
            for k in failing.split(',')}
    assert r.returncode != 0 and want <= set(lines), r.stderr[-3000:]
    ranks = [l.split(' of 2: ')[0] for l in lines]   # a rank left waiting on a failed one says so in its own one line,
    assert all(l.startswith('error: rank ') for l in lines) and len(ranks) == len(set(ranks))   # or torchrun ends it
    assert not (tmp_path / 'run' / 'results.json').exists()


def test_local_rank_beyond_the_gpus_is_one_clear_error(monkeypatch):
    from ala_paper.engine import check_local_gpu
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    check_local_gpu(0)
    with pytest.raises(ValueError, match=r'LOCAL_RANK 1 but torch sees 1 GPU\(s\) on this machine: start at most 1'):
        check_local_gpu(1)

def test_torchrun_global_batch_must_divide(tmp_path):
    from ala_paper.cli import run_torchrun
    with pytest.raises(ValueError, match="batch_size 127 does not divide over 2 process"):
        run_torchrun(2, epochs=1, batch_size=127, out_dir=tmp_path / 'run', verbose=False)
    assert not (tmp_path / 'run').exists()


def test_resume_under_another_number_of_processes(tmp_path):
    "Checkpointed by 2 gloo processes, resumed by one: it finishes, and says that the resume is not exact."
    from ala_paper.cli import run_torchrun
    run_torchrun(2, epochs=1, out_dir=tmp_path, verbose=False)
    r = cli('--epochs', '2', '--out_dir', tmp_path, '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'checkpointed with 2 processes, resumed with 1' in r.stdout
    assert [h['epoch'] for h in results(tmp_path)['history']] == [1, 2]


def noisy_split_list(root, n=48, classes=3, size=40):
    "A split-list tree of noise images (so random crops differ), every image in both lists."
    root.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    for i in range(n): Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(root / f'{i}.jpg')
    (root / 'list.txt').write_text(''.join(f'{i}.jpg {i % classes}\n' for i in range(n)))
    return ['--dataset', 'split-list', '--data_root', str(root), '--train_list', 'list.txt', '--test_list', 'list.txt',
            '--device', 'cpu', '--arch', 'resnet8', '--transform', 'imagenet', '--batch_size', '16', '--workers', '2']


def test_corrupt_jpeg_under_torchrun_names_the_file(tmp_path):
    "A corrupt image met by a DataLoader worker under DDP: the rank says which file, the run exits non-zero, nothing hangs."
    args = noisy_split_list(tmp_path / 'data')
    (tmp_path / 'data' / '5.jpg').write_bytes(b'not a jpeg')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m',
                        'ala_paper.train', *args, '--epochs', '1', '--out_dir', str(tmp_path / 'run'), '--quiet'],
                       env=ENV, capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    lines = [l for l in out.splitlines() if l.startswith('error: ')]
    assert lines and all('5.jpg' in l and 'cannot decode image' in l and l.startswith('error: rank ') for l in lines), out[-3000:]
    assert 'Caught ValueError in DataLoader worker' not in '\n'.join(lines)
    assert not (tmp_path / 'run' / 'results.json').exists()


def test_streamed_run_resumes_exactly(tmp_path):
    "Streamed images with per-image random crops and persistent workers: 1 epoch + resume to 3 = 3 epochs at once."
    args = [*noisy_split_list(tmp_path / 'data'), '--milestones', '2', '--warmup_epochs', '1', '--quiet']
    assert cli(*args, '--epochs', '3', '--out_dir', tmp_path / 'a').returncode == 0
    assert cli(*args, '--epochs', '1', '--out_dir', tmp_path / 'b').returncode == 0
    r = cli(*args, '--epochs', '3', '--out_dir', tmp_path / 'b', '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    ra, rb = results(tmp_path / 'a'), results(tmp_path / 'b')
    strip = lambda h: [{k: v for k, v in e.items() if k != 'seconds'} for e in h]
    assert strip(ra['history']) == strip(rb['history']) and ra['true_class_prob'] == rb['true_class_prob']


def test_testing_while_training_leaves_a_streamed_run_unchanged(tmp_path):
    "eval_every=1 on streamed images with loader workers: same training, each tested epoch logged, resume allowed."
    args = [*noisy_split_list(tmp_path / 'data'), '--milestones', '2', '--warmup_epochs', '1', '--epochs', '3']
    assert cli(*args, '--quiet', '--out_dir', tmp_path / 'a').returncode == 0
    assert cli(*args, '--quiet', '--epochs', '1', '--eval_every', '1', '--out_dir', tmp_path / 'b').returncode == 0
    r = cli(*args, '--eval_every', '1', '--out_dir', tmp_path / 'b', '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    assert [line.split('  test ')[1][-1] for line in r.stdout.splitlines() if line.startswith('epoch 2/3')] == ['%']
    ra, rb = results(tmp_path / 'a'), results(tmp_path / 'b')
    assert [h['loss'] for h in ra['history']] == [h['loss'] for h in rb['history']]
    assert ra['true_class_prob'] == rb['true_class_prob'] and ra['best_test_epoch'] is None
    # epoch 1 was the last epoch of the first 1-epoch run (tested by the final evaluation, not in the history)
    assert [bool(h.get('test_top1')) for h in rb['history']] == [False, True, False]
    assert rb['best_test_epoch']['epochs_tested'] == 2


def test_first_line_says_where_and_how(tmp_path):
    r = cli('--epochs', '1', '--out_dir', tmp_path)
    first = r.stdout.splitlines()[0]
    for part in ('synthetic-lt ala resnet8 on cpu', 'amp off', '1 process |', 'batch 128 per process (128 in all)',
                 "images in memory", f"{1321 // 128} steps per epoch"):
        assert part in first, first


def test_amp_asked_on_the_cpu_says_what_runs(tmp_path):
    "amp='bf16' on the CPU: no autocast there, so the first line and results.json say float32 ('off') runs."
    r = cli('--epochs', '1', '--amp', 'bf16', '--device', 'cpu', '--out_dir', tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'amp off (amp=bf16 asked: the CPU runs float32)' in r.stdout.splitlines()[0], r.stdout
    env = results(tmp_path)['env']
    assert (env['amp'], env['amp_asked'], results(tmp_path)['params']['amp']) == ('off', 'bf16', 'bf16')
    assert results(tmp_path)['batchnorm'] == dict(per_process=128, sync_bn=False, statistics_over=128)


def test_bn_batch_and_sync_bn(monkeypatch):
    "results.json's `batchnorm`: what each BatchNorm layer normalises over; sync_bn is refused where it cannot run."
    from ala_paper.train import bn_batch
    p = dict(batch_size=256, grad_accum=2, sync_bn=False)
    assert bn_batch(p, 2) == dict(per_process=64, sync_bn=False, statistics_over=64)
    assert bn_batch({**p, 'sync_bn': True}, 2) == dict(per_process=64, sync_bn=True, statistics_over=128)
    assert bn_batch({**p, 'sync_bn': True}, 1)['sync_bn'] is False            # one process: nothing to synchronise
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match='sync_bn needs CUDA'):
        train(sync_bn=True, device='cpu', epochs=1, verbose=False, progress=False)


def test_default_workers_are_the_cpus_less_one(monkeypatch):
    import ala_paper.recipe as t
    monkeypatch.setattr(t, 'cpus_per_process', lambda: 16)
    assert (t.default_workers(8), t.default_workers(4), t.default_workers(0)) == (15, 15, 0)   # synthetic-lt: none
    monkeypatch.setattr(t, 'cpus_per_process', lambda: 1)
    assert t.default_workers(8) == 1
    assert resolve_params(dataset='imagenet-lt', device='cpu')['workers'] == 1

def test_deterministic_sets_the_cublas_workspace_before_cuda(tmp_path, monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    train(epochs=1, deterministic=True, out_dir=tmp_path, verbose=False, progress=False)
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'


# --- exact resume --------------------------------------------------------------------------------------

RESUME_ARGS = ['--epochs', '3', '--warmup_epochs', '1', '--milestones', '2', '--drw_epoch', '1', '--workers', '1', '--quiet']


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])   # a crash; SLURM's preemption or time limit
def test_killed_mid_epoch_after_first_checkpoint_then_resume_equals_uninterrupted(tmp_path, sig):
    "Killed in epoch 2 (just after epoch 1's checkpoint): the resumed run is bit for bit the uninterrupted one."
    a, b = tmp_path / 'a', tmp_path / 'b'
    r = cli(*RESUME_ARGS, '--out_dir', a)
    assert r.returncode == 0, r.stderr[-2000:]
    p = subprocess.Popen([*CLI, *RESUME_ARGS, '--out_dir', str(b)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (b / CHECKPOINT).exists():
            assert p.poll() is None and time.time() - t0 < 300, 'run ended before its first checkpoint'
            time.sleep(0.01)
        p.send_signal(sig)
        p.wait(30)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == -sig
    assert not (b / 'results.json').exists(), 'the run finished before it was killed: the test proves nothing'
    killed_at = torch.load(b / CHECKPOINT, weights_only=True)['epoch']
    assert 1 <= killed_at < 3
    r = cli(*RESUME_ARGS, '--out_dir', b, '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    ra, rb = results(a), results(b)
    assert ra['per_class_acc'] == rb['per_class_acc'] and ra['top1'] == rb['top1']
    assert ra['true_class_prob'] == rb['true_class_prob']
    strip = lambda h: [{k: v for k, v in e.items() if k != 'seconds'} for e in h]
    assert strip(ra['history']) == strip(rb['history'])
    wa, wb = (torch.load(d / CHECKPOINT, weights_only=True)['model'] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_other_parameters_is_refused(tmp_path):
    train(epochs=1, out_dir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="made with loss='ala', not 'ldam'"):
        train(epochs=2, loss='ldam', out_dir=tmp_path, resume=True, verbose=False)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)   # as written before `warmup` existed: per step
    del ckpt['params']['warmup']
    torch.save(ckpt, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="made with warmup='step', not 'epoch'"):
        train(epochs=2, warmup='epoch', out_dir=tmp_path, resume=True, verbose=False)


# --- bad input -----------------------------------------------------------------------------------------

BAD = {
    'unknown dataset': (['--dataset', 'mnist'], "unknown dataset 'mnist'; choose one of: synthetic-lt, cifar10-lt"),
    'unknown loss': (['--loss', 'hinge'], "unknown loss 'hinge'; choose one of: ce, focal, cb"),
    'unknown arch': (['--arch', 'vgg16'], "unknown arch 'vgg16'; choose one of: resnet8"),
    'epochs < 1': (['--epochs', '0'], "epochs must be an integer >= 1"),
    'batch size < 1': (['--batch_size', '0'], "batch_size must be an integer >= 1"),
    'resume without checkpoint': (['--resume'], "resume=True but there is no checkpoint.pt"),
    'no data_root': (['--dataset', 'imagenet-lt', '--device', 'cpu'], "imagenet-lt needs data_root"),
    'missing data_root': (['--dataset', 'places-lt', '--device', 'cpu', '--data_root', '{tmp}/nowhere'], "does not exist"),
    'missing list file': (['--dataset', 'imagenet-lt', '--device', 'cpu', '--data_root', '{tmp}'], "not found"),
    'unknown ImageNet weights': (['--arch', 'resnet50', '--device', 'cpu', '--pretrained', 'IMAGENET1K_V9'],
                                 "resnet50 has no torchvision weights 'IMAGENET1K_V9'; choose one of: IMAGENET1K_V1, IMAGENET1K_V2"),
    'ImageNet weights not downloaded': (['--arch', 'resnet50', '--device', 'cpu', '--pretrained', 'imagenet'],
                                        "hub/checkpoints/resnet50-0676ba61.pth: put https://"),
    'in_memory not a bool': (['--in_memory', 'maybe'], "in_memory must be True, False or None"),
    'split-list without lists': (['--dataset', 'split-list', '--device', 'cpu', '--data_root', '{tmp}'], "split-list needs train_list and test_list"),
    'missing pretrained file': (['--pretrained', '{tmp}/w.pt'], "pretrained weights file not found"),
    'unknown option': (['--colour', 'red'], "unrecognized arguments: --colour"),
    'imbalance ratio nan': (['--imbalance_ratio', 'nan'], "imbalance_ratio must be a finite number >= 1"),
    'imbalance ratio < 1': (['--imbalance_ratio', '0.5'], "imbalance_ratio must be a finite number >= 1"),
    'drw_beta 1': (['--drw_beta', '1.0'], "drw_beta must be in [0, 1)"),
    'unknown loss option': (['--loss_kw', '{"bogus": 1}'], "does not fit loss 'ala'"),
    'unknown warm-up': (['--warmup', 'epochs'], "unknown warmup 'epochs'; choose one of: step, epoch"),
    'LDAM draw off CIFAR': (['--data_draw', 'ldam'], "data_draw 'ldam' chooses a CIFAR-LT subset; synthetic-lt"),
    'unknown draw': (['--dataset', 'cifar10-lt', '--data_draw', 'cao'], "unknown data_draw 'cao'; choose one of: random, ldam"),
}


def _args(case, tmp_path):
    args, msg = BAD[case]
    args = [a.replace('{tmp}', str(tmp_path)) for a in args] + ([] if '--epochs' in args else ['--epochs', '1'])
    return [*args, '--out_dir', str(tmp_path / 'run')], msg


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_cli_main(tmp_path, capsys, case, monkeypatch):
    "Every bad input through the CLI entry point, in-process: exit 2, one line `error: ...`, nothing written."
    from ala_paper.train import main
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))     # an empty weights cache
    args, msg = _args(case, tmp_path)
    with pytest.raises(SystemExit) as e: main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith('error: ') and msg in err, err
    assert not (tmp_path / 'run').exists()


def test_out_dir_that_is_a_file(tmp_path, capsys):
    "out_dir naming a file (or a folder under one): one line that names the file, exit 2, the file untouched."
    from ala_paper.train import main
    (tmp_path / 'f').write_text('keep')
    for out in (tmp_path / 'f', tmp_path / 'f' / 'run'):
        with pytest.raises(SystemExit) as e: main(['--epochs', '1', '--out_dir', str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err == f"error: out_dir {out}: {tmp_path / 'f'} is a file, not a folder; give a folder for the run's files\n"
    assert (tmp_path / 'f').read_text() == 'keep'


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_imagenet_scale_recipe_refuses_the_cpu_unless_asked(tmp_path, capsys):
    "No GPU (or a driver too old for this torch): an ImageNet-scale preset does not silently train for days on the CPU."
    from ala_paper.train import main
    with pytest.raises(SystemExit) as e: main(['--dataset', 'inat2018', '--data_root', str(tmp_path), '--out_dir', str(tmp_path / 'run')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs a GPU" in err and "device='cpu'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('case', ['unknown dataset', 'epochs < 1', 'resume without checkpoint', 'missing list file'])
def test_bad_input_real_process(tmp_path, case):
    "The same as a real `python -m ala_paper.train` process: status 2, one line on stderr, no traceback, no files."
    args, msg = _args(case, tmp_path)
    r = cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ') and msg in lines[0], r.stderr
    assert not (tmp_path / 'run').exists()


def test_bad_input_raises_same_message_in_python(tmp_path):
    for kw, msg in [(dict(dataset='mnist'), "unknown dataset 'mnist'"), (dict(epochs=0), "epochs must be an integer >= 1"),
                    (dict(arch='vgg16'), "unknown arch 'vgg16'"), (dict(resume=True), "no checkpoint.pt")]:
        with pytest.raises(ValueError, match=msg):
            train(out_dir=tmp_path / 'run', **kw)
    assert not (tmp_path / 'run').exists()


# --- real formats, real class counts ---------------------------------------------------------------------

FAST = ['--arch', 'resnet8', '--epochs', '1', '--batch_size', '256', '--transform', 'cifar', '--workers', '0', '--quiet']


@pytest.mark.parametrize('dataset,num_classes', [('imagenet-lt', 1000), ('places-lt', 365), ('inat2018', 8142)])
def test_one_epoch_on_large_class_trees(tmp_path, dataset, num_classes):
    data = tmp_path / 'data'
    counts = [150, 40] + [1] * (num_classes - 2)          # many, medium, and the rest few-shot
    if dataset == 'inat2018': make_inat_tree(data, num_classes, counts)
    else: make_split_list_tree(data, dataset, num_classes, counts)
    r = cli('--dataset', dataset, '--data_root', data, '--out_dir', tmp_path / 'run', '--loss', 'ala', *FAST, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = results(tmp_path / 'run')
    check_results(res, 1)
    assert len(res['class_counts']) == num_classes and res['class_counts'] == counts
    assert all(res['top1'][g] is not None for g in GROUPS)
    assert len(res['test_targets']) == num_classes and None not in res['per_class_acc']
    assert set(res['history'][0]['factors']) == {'many', 'medium', 'few'}


# --- class weights really reach the loss ------------------------------------------------------------------

def test_class_weights_take_effect(tmp_path):
    "'cb' weights from the first epoch and DRW weights from drw_epoch change the training loss; none otherwise."
    kw = dict(epochs=1, workers=0, verbose=False, progress=False)
    loss = lambda **k: train(out_dir=tmp_path / str(len(list(tmp_path.iterdir()))), **kw, **k)['history'][0]['loss']
    ce, cb = loss(loss='ce'), loss(loss='cb')
    assert abs(ce - cb) > 1e-3, (ce, cb)                       # cb keeps its class-balanced weights
    assert loss(loss='ce') == pytest.approx(ce, abs=1e-9)     # and the run itself is deterministic
    ala, ala_drw = loss(loss='ala', drw_epoch=-1), loss(loss='ala', drw_epoch=0)
    assert abs(ala - ala_drw) > 1e-3, (ala, ala_drw)


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(tmp_path):
    train(out_dir=tmp_path, epochs=2, workers=0, verbose=False, progress=False)
    with pytest.raises(ValueError, match="beyond epochs=1"):
        train(out_dir=tmp_path, epochs=1, resume=True, workers=0, verbose=False, progress=False)


def test_decode_on_device_trains_and_resumes_exactly(tmp_path):
    "JPEG bytes decoded and cropped on the training device (the CPU here): a run, and 1 epoch + resume = 2 epochs at once."
    args = [*noisy_split_list(tmp_path / 'data', n=32), '--decode_on_device', 'true', '--quiet']
    assert cli(*args, '--epochs', '2', '--out_dir', tmp_path / 'a').returncode == 0
    assert cli(*args, '--epochs', '1', '--out_dir', tmp_path / 'b').returncode == 0
    r = cli(*args, '--epochs', '2', '--out_dir', tmp_path / 'b', '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    ra, rb = results(tmp_path / 'a'), results(tmp_path / 'b')
    assert ra['params']['decode_on_device'] is True and ra['true_class_prob'] == rb['true_class_prob']
    r = cli(*args, '--transform', 'cifar', '--epochs', '1', '--out_dir', tmp_path / 'c')
    assert r.returncode == 2 and "decode_on_device crops like the 'imagenet' transform only" in r.stderr


def test_decode_on_device_names_a_corrupt_image(tmp_path):
    "A damaged JPEG decoded on the training device: one `error:` line that names the file, no traceback."
    args = noisy_split_list(tmp_path / 'data', n=16)
    (tmp_path / 'data' / '5.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    r = cli(*args, '--decode_on_device', 'true', '--quiet', '--epochs', '1', '--out_dir', tmp_path / 'run')
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: cannot decode image '), r.stderr[-2000:]
    assert str(tmp_path / 'data' / '5.jpg') in lines[0] and not (tmp_path / 'run' / 'results.json').exists()


def test_grad_accum_splits_the_batch(tmp_path):
    "batch 128 as 4 micro-batches of 32: the first line says so, and the epoch sees the same images in as many steps."
    r = cli('--epochs', '1', '--grad_accum', '4', '--out_dir', tmp_path / 'a')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'batch 128 per process in 4 micro-batches of 32' in r.stdout.splitlines()[0]
    assert results(tmp_path / 'a')['history'][0]['images'] == 1321 // 128 * 128
    r = cli('--epochs', '1', '--grad_accum', '3', '--out_dir', tmp_path / 'b')
    assert r.returncode == 2 and 'batch_size 128 does not divide over 1 process(es) x 3 micro-batch(es)' in r.stderr


def test_cli_has_one_option_per_parameter():
    from ala_paper.recipe import PARAM_NAMES, cli_parser
    r = subprocess.run([*CLI, '--help'], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(f'--{name}' in r.stdout for name in PARAM_NAMES)
    assert set(vars(cli_parser().parse_args([]))) == set(PARAM_NAMES)


def test_resume_a_checkpoint_from_before_the_backbone_head_split(tmp_path):
    "Checkpoints made before the optimiser had backbone and head groups (one group) resume exactly."
    kw = dict(verbose=False, progress=False, milestones=[1], warmup_epochs=1)
    whole = train(epochs=2, out_dir=tmp_path / 'a', **kw)
    train(epochs=1, out_dir=tmp_path / 'b', **kw)
    ckpt = torch.load(tmp_path / 'b' / CHECKPOINT, weights_only=True)
    groups, sched = ckpt['optimizer']['param_groups'], ckpt['scheduler']
    assert len(groups) == 2
    ckpt['optimizer']['param_groups'] = [dict(groups[0], params=groups[0]['params'] + groups[1]['params'])]
    ckpt['scheduler'] = dict(sched, base_lrs=sched['base_lrs'][:1], _last_lr=sched['_last_lr'][:1],
                             lr_lambdas=sched['lr_lambdas'][:1])
    torch.save(ckpt, tmp_path / 'b' / CHECKPOINT)
    resumed = train(epochs=2, out_dir=tmp_path / 'b', resume=True, **kw)
    assert [h['loss'] for h in resumed['history']] == [h['loss'] for h in whole['history']]
    assert resumed['per_class_acc'] == whole['per_class_acc']
    ckpt['optimizer']['param_groups'][0]['params'] = ckpt['optimizer']['param_groups'][0]['params'][:-1]
    torch.save(ckpt, tmp_path / 'b' / CHECKPOINT)
    r = cli('--epochs', '3', '--out_dir', tmp_path / 'b', '--resume', '--milestones', '1', '--warmup_epochs', '1')
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'does not fit this model' in r.stderr, r.stderr


def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path, capsys):
    "A checkpoint cut short, some other file under its name, or another program's checkpoint: exit 2, one line."
    from ala_paper.train import main
    out = tmp_path / 'run'
    main(['--epochs', '1', '--out_dir', str(out), '--workers', '0', '--progress', 'false'])
    whole = (out / 'checkpoint.pt').read_bytes()
    results = (out / 'results.json').read_bytes()
    capsys.readouterr()
    for damage, says in ((lambda p: p.write_bytes(whole[:len(whole) // 3]), 'is damaged or cut short'),
                         (lambda p: p.write_text('notes'), 'is not a PyTorch checkpoint'),
                         (lambda p: torch.save({'state_dict': {}}, p), 'is not a checkpoint of ala_paper.train')):
        damage(out / 'checkpoint.pt')
        with pytest.raises(SystemExit) as e: main(['--epochs', '2', '--out_dir', str(out), '--resume'])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith('error: ') and says in err, err
        assert (out / 'results.json').read_bytes() == results                # the finished run's results untouched


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    "ENOSPC in epoch 2's checkpoint: exit 2, one line saying the disk is full; epoch 1's checkpoint intact, no temp file."
    import errno
    import ala_paper.checkpoints as ck
    from ala_paper.train import main
    out, save, calls = tmp_path / 'run', torch.save, []
    def save_until_full(obj, f, *a, **k):
        calls.append(f)
        if len(calls) > 1: raise OSError(errno.ENOSPC, 'No space left on device')
        return save(obj, f, *a, **k)
    monkeypatch.setattr(ck.torch, 'save', save_until_full)
    args = ['--epochs', '2', '--out_dir', str(out), '--workers', '0', '--progress', 'false']
    with pytest.raises(SystemExit) as e: main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f'error: writing {out / CHECKPOINT} failed: the disk holding') and 'is full' in err, err
    assert 'the previous checkpoint.pt is intact' in err
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT]                # no temp file, no results.json
    monkeypatch.setattr(ck.torch, 'save', save)
    assert torch.load(out / CHECKPOINT, weights_only=True)['epoch'] == 1
    main(args + ['--resume'])                                                    # room again: it goes on from epoch 1
    assert (out / 'results.json').is_file()


def test_tensorboard_writes_the_epoch_scalars_and_a_resume_continues_them(tmp_path):
    "tensorboard=True: one event stream under OUT_DIR/tensorboard with train and test scalars per epoch, no step twice."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from ala_paper.train import train
    out = tmp_path / 'run'
    kw = dict(out_dir=str(out), workers=0, progress=False, verbose=False, tensorboard=True, eval_every=1)
    train(epochs=2, **kw)
    train(epochs=3, resume=True, **kw)                                  # a second writer appends epoch 3
    acc = EventAccumulator(str(out / 'tensorboard')).Reload()
    tags = set(acc.Tags()['scalars'])
    assert {'train/loss', 'train/accuracy', 'train/lr', 'train/images_per_second', 'train/drw',
            'test/top1_all', 'test/top1_many'} <= tags, tags
    history = results(out)['history']
    for tag, key in (('train/loss', 'loss'), ('train/accuracy', 'train_acc'), ('train/lr', 'lr')):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], (tag, events)
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)
    assert [e.step for e in acc.Scalars('test/top1_all')] == [1, 2, 3]  # tested while training (1), then each final test
    assert acc.Scalars('test/top1_all')[-1].value == pytest.approx(results(out)['top1']['all'])
