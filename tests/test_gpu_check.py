"""The GPU check script: its CPU smoke mode (every check runs, or says it did not), and three regressions broken on
purpose (the fp32 head, the global weight sum, the per-rank augmentation), each of which must fail it."""
import json, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ala_paper.models import CosineClassifier
from ala_paper.core import project_root

ROOT = project_root()
sys.path.insert(0, str(ROOT / 'tests'))
import gpu_check   # noqa: E402

NOT_RUN_ON_CPU = {'environment', 'channels_last_as_exact', 'engine_fp16_step', 'resnet50_batch512_bf16',
                  'other_backbones_batch256', 'jpeg_loader_keeps_up', 'nccl_train_two_gpus'}


def run(tmp_path, *args):
    out = tmp_path / 'report.json'
    r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_check.sh'), '--device', 'cpu', '--quick', '--out', str(out), *args],
                       capture_output=True, text=True, timeout=600)
    return r, json.loads(out.read_text())


def test_gpu_check_cpu_smoke(tmp_path):
    r, rep = run(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    checks = rep['checks']
    assert set(checks) == {fn.__name__ for fn in gpu_check.CHECKS}
    assert {k for k, v in checks.items() if v['status'] == 'not run'} == NOT_RUN_ON_CPU     # never counted as passed
    assert all(v['status'] == 'passed' for k, v in checks.items() if k not in NOT_RUN_ON_CPU)
    assert checks['cosine_head_precision']['figures']['bf16']['head_dtype'] == 'torch.float32'
    assert 'cannot decode image' in checks['corrupt_jpeg_is_named']['figures']['error']
    ddp = checks['ddp_weighted_grad_and_augmentation']['figures']
    assert ddp['backend'] == 'gloo' and ddp['grad_rel_error'] < 1e-5 and ddp['shared_image_seeds'] == 0
    loader = checks['jpeg_loader_keeps_up']['figures']          # measured on the CPU, its GPU threshold not applied
    assert loader['loader_images_per_second'] > 0 and loader['model_images_per_second'] > 0
    assert rep['result'] == 'passed' and rep['commit']


def test_gpu_check_without_cuda_refuses_plainly(tmp_path):
    if torch.cuda.is_available(): pytest.skip('a CUDA device is visible: the refusal cannot happen here')
    r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_check.sh')], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith('error: no CUDA device')


def check_alone(tmp_path, name):
    "Run one check in this process (monkeypatches apply); return main's exit status and the check's record."
    out = tmp_path / 'one.json'
    code = gpu_check.main(['--device', 'cpu', '--quick', '--only', name, '--out', str(out)])
    return code, json.loads(out.read_text())['checks'][name]


def test_the_report_is_written_after_every_item(tmp_path, monkeypatch):
    out, seen = tmp_path / 'r.json', {}
    def first(dev, quick): return dict(x=1)
    def second(dev, quick):      # the report on disk already holds the first item while the second runs
        seen.update(json.loads(out.read_text())); return {}
    monkeypatch.setattr(gpu_check, 'CHECKS', [first, second])
    assert gpu_check.main(['--device', 'cpu', '--quick', '--out', str(out)]) == 0
    assert seen['checks']['first']['status'] == 'passed' and seen['result'] == 'running'


def test_a_head_that_follows_autocast_fails_the_check(tmp_path, monkeypatch):
    assert check_alone(tmp_path, 'cosine_head_precision')[1]['status'] == 'passed'
    def bare(self, x):           # the regression: no float32 island, so bf16 autocast computes cos θ in bf16
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
    monkeypatch.setattr(CosineClassifier, 'forward', bare)
    code, rec = check_alone(tmp_path, 'cosine_head_precision')
    assert code == 1 and rec['status'] == 'failed' and 'bfloat16' in rec['error']


BREAKS = {   # sitecustomize.py runs in every process torchrun starts: the regression reaches each rank
    'weight_total': ("t.weight_total = lambda weight, targets: None if weight is None else "
                     "sum(weight.to(y.device)[y].sum() for y in targets).detach()    # this rank's sum, not all-reduced",
                     'differs from one process'),
    'seed_of': ("_seed_of = t.seed_of\nt.seed_of = lambda seed, epoch=0, rank=0: _seed_of(seed, epoch)   # rank forgotten",
                'ranks draw the same augmentation'),
}


@pytest.mark.parametrize('broken', list(BREAKS))
def test_ddp_regressions_fail_the_check(tmp_path, monkeypatch, broken):
    code, why = BREAKS[broken]
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(f"import ala_paper.train as t\n{code}\n")
    monkeypatch.setenv('PYTHONPATH', f"{site}:{ROOT}")
    code, rec = check_alone(tmp_path, 'ddp_weighted_grad_and_augmentation')
    assert code == 1 and rec['status'] == 'failed' and why in rec['error'], rec


def gpu_run(dest, *args):
    r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_run.sh'), str(dest), '--smoke', *args], capture_output=True,
                       text=True, timeout=600)
    return r, json.loads((dest / 'gpu_run.json').read_text())


def test_gpu_run_smoke_fills_dest_and_skips_what_is_done(tmp_path):
    "tests/gpu_run.sh --smoke: the check's report and two runs' results.json land in DEST; a second call runs nothing."
    r, summary = gpu_run(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((tmp_path / 'gpu_check.json').read_text())['result'] == 'passed'
    assert sorted(p.parts[-5] for p in (tmp_path / 'runs').rglob('results.json')) == ['ce', 'ldam-drw']
    assert [v['state'] for v in summary['runs'].values()] == ['done', 'done'] and summary['commit']
    r, summary = gpu_run(tmp_path)
    assert r.returncode == 0 and '2 runs: 2 done, 0 to run' in r.stdout, r.stdout[-2000:]


def test_gpu_run_stops_before_its_limit_and_resumes(tmp_path):
    "Runs longer than --minutes get SIGTERM before it, keep their checkpoints, and the next call resumes them first."
    t0 = time.time()
    r, summary = gpu_run(tmp_path, '--minutes', '1', '--epochs', '400')
    assert time.time() - t0 < 60 and r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [v['state'] for v in summary['runs'].values()] == ['stopped', 'stopped'], summary
    checkpoints = sorted((tmp_path / 'runs').rglob('checkpoint.pt'))
    assert len(checkpoints) == 2 and not list((tmp_path / 'runs').rglob('results.json'))
    first = [torch.load(c, weights_only=True)['epoch'] for c in checkpoints]
    r, summary = gpu_run(tmp_path, '--minutes', '1', '--epochs', '400')
    assert r.stdout.count('\nresume ') == 2, r.stdout[-2000:]
    later = [torch.load(c, weights_only=True)['epoch'] for c in checkpoints]
    assert all(b > a for a, b in zip(first, later)), (first, later)              # went on from the checkpoint


def test_gpu_run_takes_a_data_tar_and_packs_what_a_lent_machine_sends_back(tmp_path):
    "--data_tar: a .tar.xz of CIFAR image folders, extracted once, its inner sha256 recorded; --pack: <= 8 files <= 15 MiB."
    import hashlib, lzma, tarfile
    from ala_paper.fixtures import make_cifar_folders
    make_cifar_folders(tmp_path / 'jpeg', per_class=40, test_per_class=5)
    with tarfile.open(tmp_path / 'cifar.tar', 'w') as tf:
        for split in ('train', 'test'): tf.add(tmp_path / 'jpeg' / split, split)
    inner = (tmp_path / 'cifar.tar').read_bytes()
    (tmp_path / 'cifar.tar.xz').write_bytes(lzma.compress(inner))
    dest, pack = tmp_path / 'dest', tmp_path / 'out'
    r, summary = gpu_run(dest, '--data_tar', str(tmp_path / 'cifar.tar.xz'), '--pack', str(pack))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert summary['data_tar_sha256'] == hashlib.sha256(inner).hexdigest()
    assert Path(summary['data_root']) == (dest / 'data').resolve() and 'extracting' in r.stdout
    results = list((dest / 'runs').rglob('results.json'))
    assert len(results) == 2 and all(json.loads(p.read_text())['params']['data_root'] == summary['data_root'] for p in results)
    sent = sorted(p.name for p in pack.iterdir())
    assert sent == ['checkpoints-1.tar', 'gpu_check.json', 'gpu_run.json', 'runs.tar.gz'], sent
    assert all(p.stat().st_size < 15 << 20 for p in pack.iterdir())
    back = tmp_path / 'back'
    for name in ('runs.tar.gz', 'checkpoints-1.tar'):
        with tarfile.open(pack / name) as tf: tf.extractall(back, filter='data')
    for p in results:                                                    # the pack restores DEST's runs byte for byte
        assert (back / p.relative_to(dest)).read_bytes() == p.read_bytes()
        assert (back / p.relative_to(dest)).with_name('checkpoint.pt').read_bytes() == p.with_name('checkpoint.pt').read_bytes()
    again, summary = gpu_run(dest, '--data_tar', str(tmp_path / 'cifar.tar.xz'))   # the same archive: not unpacked again
    assert again.returncode == 0 and 'extracting' not in again.stdout and summary['data_tar_sha256'] == hashlib.sha256(inner).hexdigest()


def test_gpu_run_names_a_damaged_data_tar_or_a_folder_without_cifar(tmp_path):
    "A cut-short --data_tar, a missing one, or a --data_root without CIFAR: one error line, nothing left half-made."
    import lzma
    cut = tmp_path / 'cut.tar.xz'
    cut.write_bytes(lzma.compress(b'x' * 5000)[:200])
    for args, says in ((['--smoke', '--data_tar', str(cut)], 'cannot be read as a tar'),
                       (['--data_tar', str(tmp_path / 'nothing.tar.xz')], 'is not a file'),
                       (['--data_root', str(tmp_path)], 'holds neither cifar-10-batches-py/')):
        r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_run.sh'), str(tmp_path / 'dest'), *args],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode != 0 and 'error: ' in r.stderr and says in r.stderr, r.stderr[-2000:]
        assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / 'dest' / 'data').exists()                      # nothing half-extracted left behind


@pytest.mark.parametrize('args, says', [(['--minutes', 'abc'], '--minutes abc: give a whole number'),
                                        (['--jobs', '0'], '--jobs 0: give a whole number'),
                                        (['--minutes'], '--minutes needs a value'),
                                        (['--seeds', 'x'], '--seeds x: seeds are whole numbers'),
                                        (['--bogus'], 'unknown option --bogus')])
def test_gpu_run_options_a_user_gets_wrong_are_one_line(tmp_path, args, says):
    r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_run.sh'), str(tmp_path / 'dest'), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == r.stderr.strip().splitlines()[0] and says in r.stderr, r.stderr
    assert not (tmp_path / 'dest').exists()
