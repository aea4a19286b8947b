"""GPU check of the training engine: every item asserts something a regression would break; figures are measured.

Run on a machine with a CUDA GPU, from the repository root with the project installed:

    bash tests/gpu_check.sh                 # writes figures/gpu_check_<gpu>.json, exits 1 if any check failed

The JSON report is rewritten after every item, so a timeout keeps what ran. `--device cpu --quick` runs the same
script with tiny sizes on a CPU: what needs CUDA is reported as `not run` (with the CPU figures where some were
measured), never as passed; CI uses it to keep the script working. tests/test_gpu_check.py breaks the fp32 head,
the global weight sum and the per-rank augmentation on purpose and sees the check fail. Budget on one GPU: about
5 minutes (an estimate: no line of this has run on a GPU yet).
"""
import argparse, json, os, platform, re, subprocess, sys, tempfile, time, traceback
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ala_paper.losses import make_loss
from ala_paper.models import build_model
from ala_paper.core import atomic_write_json, git_commit, project_root
from ala_paper.models import no_tf32
from ala_paper.benchmarks import _photo_tree, loader_benchmark
from ala_paper.benchmarks import layout_gradient_error
from ala_paper.engine import auto_amp
from ala_paper.train import EpochTotals, _step, train

sys.path.insert(0, str(Path(__file__).parent))
from ddp_weighted_grad import engine_run            # noqa: E402  (the engine's Run on synthetic-lt, as train() makes it)

ROOT = project_root()
CHECKS = []


def check(fn):
    "Register a check: it returns a dict of figures and raises AssertionError (or Skip) when it cannot pass."
    CHECKS.append(fn); return fn


class Skip(Exception):
    "The check did not run (it needs CUDA, or two GPUs): reported as `not run`, with what was measured before."
    def __init__(self, reason, figures=None): super().__init__(reason); self.figures = figures


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def peak_gib(dev):
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == 'cuda' else None


def needs_cuda(dev):
    if dev.type != 'cuda': raise Skip('needs CUDA')


# ---------------------------------------------------------------------------------------------------------------
# Throughput floors: datasheet dense 16-bit tensor FLOP/s (bf16; fp16 where the GPU has no bf16; no sparsity) x
# EFFICIENCY, divided by the training FLOPs per image that torch's FlopCounterMode counts on the step itself.
# 4 % is well under what eager PyTorch reaches with bf16 + channels_last on these models (A100: ResNet-50 about
# 2,500 img/s x 24.6 GFLOP = 20 % of 312 TFLOP/s, from published figures, not measured here), and above what a
# float32 or NCHW regression gives on a tensor-core GPU. On an H200: 989e12 x 0.04 / 24.6e9 = about 1,600 img/s.
DATASHEET_TFLOPS = [('H200', 989), ('H100 PCIe', 756), ('H100', 989), ('B200', 2250), ('A100', 312), ('L40S', 362),
                    ('L40', 181), ('L4', 121), ('A10', 125), ('RTX 4090', 165), ('RTX A6000', 155), ('V100', 125),
                    ('T4', 65)]   # first match on the device name: 'A100' before 'A10', 'L40S' before 'L40'
EFFICIENCY = 0.04


def amp_dtype():
    return torch.bfloat16 if auto_amp() == 'bf16' else torch.float16


def datasheet_tflops(dev):
    name = torch.cuda.get_device_name(dev)
    return next((tf for key, tf in DATASHEET_TFLOPS if key in name), None)


def throughput_floor(dev, flops_per_image):
    "Images/s a healthy step must reach: datasheet FLOP/s x EFFICIENCY / training FLOPs per image (None: GPU unknown)."
    peak = datasheet_tflops(dev)
    return None if peak is None else round(peak * 1e12 * EFFICIENCY / flops_per_image, 1)


@check
def environment(dev, quick):
    "This torch has kernels for the GPU, and the precision `auto_amp` picks multiplies at least 2x float32's speed."
    out = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(), device=str(dev))
    if dev.type != 'cuda': raise Skip('needs CUDA', out)
    cap = torch.cuda.get_device_capability(dev)
    archs = torch.cuda.get_arch_list()
    out.update(gpu=torch.cuda.get_device_name(dev), capability=f'{cap[0]}.{cap[1]}', arch_list=archs,
               gpus=torch.cuda.device_count(), amp_auto=auto_amp(), cudnn=torch.backends.cudnn.version(),
               datasheet_tflops=datasheet_tflops(dev))
    ptx = [a for a in archs if a.startswith('compute_') and int(a[8:]) <= 10 * cap[0] + cap[1]]
    assert f'sm_{cap[0]}{cap[1]}' in archs or ptx, f'torch {torch.__version__} has no kernels for sm_{cap[0]}{cap[1]}: {archs}'
    a = torch.randn(8192, 8192, device=dev)
    def rate(dtype):
        x = a.to(dtype); x @ x; sync(dev); t0 = time.perf_counter()
        for _ in range(10): x @ x
        sync(dev); return 10 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12
    with no_tf32(): fp32 = rate(torch.float32)
    half = rate(amp_dtype())
    out.update(matmul_tflops={'fp32': round(fp32, 1), out['amp_auto']: round(half, 1)})
    assert half >= 2 * fp32, f"{out['amp_auto']} matmul is not 2x faster than float32: {out['matmul_tflops']}"
    if cap[0] >= 8: assert out['amp_auto'] == 'bf16', out
    return out


@check
def cosine_head_precision(dev, quick):
    """ResNet-50 + 8,142-class cosine head under fp32, bf16 and fp16 autocast: the head computes in float32.

    |Δcos| and the ALA loss's relative error compare the head under autocast with the float32 head on the same
    backbone features (what the engine controls); the end-to-end figures against a float32 backbone are reported."""
    C, B = (8142, 8) if quick else (8142, 64)
    torch.manual_seed(0)
    model = build_model('resnet50', C, cosine=True).to(dev).train()
    counts = [max(2, int(1000 * 0.01 ** (i / (C - 1)))) for i in range(C)]
    crit = make_loss('ala', counts, validate=False).to(dev)
    x = torch.randn(B, 3, 224 if not quick else 64, 224 if not quick else 64, device=dev)
    y = torch.randint(0, C, (B,), device=dev)
    with torch.no_grad():
        feats32 = model.backbone(x)
        cos32 = model.head(feats32); loss32 = crit(cos32, y)
    out = {}
    for name, dtype in [('bf16', torch.bfloat16), ('fp16', torch.float16)]:
        if dev.type == 'cpu' and dtype == torch.float16: continue
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype):
            feats = model.backbone(x)
            cos = model.head(feats)
            bare = F.linear(F.normalize(feats, dim=1), F.normalize(model.head.weight, dim=1))   # what autocast alone gives
            loss = crit(cos.float(), y)
        head_ref = model.head(feats.float())                                   # fp32 head, same features
        head_err = (cos - head_ref).abs().max().item()
        end_err = (cos - cos32).abs().max().item()
        loss_rel = abs(loss.item() - crit(head_ref, y).item()) / abs(crit(head_ref, y).item())
        out[name] = dict(head_dtype=str(cos.dtype), head_abs_cos_error=head_err, bare_autocast_abs_cos_error=(bare.float() - head_ref).abs().max().item(),
                         end_to_end_abs_cos_error=end_err, loss_rel_error=loss_rel,
                         end_to_end_loss_rel_error=abs(loss.item() - loss32.item()) / abs(loss32.item()))
        assert cos.dtype == torch.float32, out
        assert head_err < 1e-3 and loss_rel < 1e-3, out
        # end_to_end_*: the 16-bit backbone's own rounding (features differ before the head); reported, not asserted
    return out


@check
def channels_last_as_exact(dev, quick):
    "channels_last is on by default on CUDA: its float32 step must be about as exact as the contiguous one."
    needs_cuda(dev)   # on this project's CPUs it is not (BatchNorm ~10x, running stats tens of times): off there by default
    kw = dict(arch='resnet8' if quick else 'resnet32', batch_size=32 if quick else 128, device=dev)
    off, on = layout_gradient_error(False, **kw), layout_gradient_error(True, **kw)
    ratio = {k: on[k] / off[k] for k in off}
    assert all(r < 4 for r in ratio.values()), dict(contiguous=off, channels_last=on)
    return dict(contiguous=off, channels_last=on, ratio=ratio)


@check
def engine_fp16_step(dev, quick):
    "The engine's own fp16 step (`setup` + `_step`, amp='fp16'): a step moves the weights; a step whose fp16 backward overflows is skipped and halves the scale; `train(amp='fp16')` finishes an epoch."
    needs_cuda(dev)
    with tempfile.TemporaryDirectory() as d:
        run = engine_run(dev, d, amp='fp16')
        assert run.scaler is not None and run.amp_dtype == torch.float16, (run.scaler, run.amp_dtype)
        x = torch.from_numpy(run.data.train.data[:64]).permute(0, 3, 1, 2).to(dev)
        y = torch.from_numpy(run.data.train.targets[:64]).to(dev)
        prep, totals = run.data.pipeline.train_batch, EpochTotals(run.loss_fn, run.data.class_counts, dev)
        params = lambda: [p.detach().clone() for p in run.plain_model.parameters()]
        before = params()
        for finite_steps in range(1, 6):       # the first scale (2^16) may overflow: that step is skipped, the next not
            _step(run, [(x, y)], prep, totals)
            moved = sum(not torch.equal(a, b) for a, b in zip(before, run.plain_model.parameters()))
            if moved: break
        run.scaler.update(new_scale=2.0 ** 100)   # an overflow in the fp16 backward (the loss rejects inf logits)
        before, scale = params(), run.scaler.get_scale()
        _step(run, [(x, y)], prep, totals)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, run.plain_model.parameters()))
        out = dict(finite_steps=finite_steps, tensors_moved_by_finite_step=moved, scale_before_overflow=scale,
                   scale_after_overflow=run.scaler.get_scale(), unchanged_after_overflow=unchanged)
        assert moved > 0 and unchanged and out['scale_after_overflow'] == scale / 2, out
        r = train(dataset='synthetic-lt', amp='fp16', epochs=1, device='cuda', out_dir=f'{d}/run', verbose=False, progress=False)
    out.update(amp=r['params']['amp'], top1=r['top1']['all'])
    assert r['params']['amp'] == 'fp16', out
    return out


def _throughput(arch, dev, batch, steps, compile_=False, classes=8142):
    "Images/s of a bf16 (fp16 without bf16) channels_last training step, and its FLOPs per image (eager only)."
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    model = build_model(arch, classes, cosine=True).to(dev).to(memory_format=torch.channels_last)
    crit = make_loss('ala', [max(2, int(1000 * 0.01 ** (i / (classes - 1)))) for i in range(classes)], validate=False).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=dev)
    def step():
        with torch.autocast(dev.type, dtype=amp_dtype()):
            out = run(x)
        loss = crit(out.float(), y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    counter = nullcontext() if compile_ else FlopCounterMode(display=False)
    t0 = time.perf_counter()
    with counter: step()
    step(); sync(dev); warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps): step()
    sync(dev)
    rate = steps * batch / (time.perf_counter() - t0)
    del model, opt, run
    if dev.type == 'cuda': torch.cuda.empty_cache()
    out = dict(images_per_second=round(rate, 1), peak_gib=peak_gib(dev), warmup_seconds=round(warm, 1), batch=batch)
    if not compile_: out['gflops_per_image'] = round(counter.get_total_flops() / batch / 1e9, 2)
    return out


def _assert_floor(dev, out, rates):
    "Fill in the floor from the eager step's FLOPs; `not run` on an unknown GPU; every rate in `rates` above it."
    out['floor_images_per_second'] = floor = throughput_floor(dev, out['gflops_per_image'] * 1e9)
    out['floor_formula'] = f"{datasheet_tflops(dev)} TFLOP/s x {EFFICIENCY} / {out['gflops_per_image']} GFLOP per image"
    if floor is None:
        raise Skip(f'no datasheet FLOP/s for {torch.cuda.get_device_name(dev)}: add it to DATASHEET_TFLOPS', out)
    assert all(r >= floor for r in rates), out


@check
def resnet50_batch512_bf16(dev, quick):
    "ResNet-50, batch 512, bf16 autocast, channels_last, 8,142-class ALA head: eager and compiled, each above the floor."
    needs_cuda(dev)
    eager = _throughput('resnet50', dev, 512, 20)
    out = dict(eager=eager, compiled=_throughput('resnet50', dev, 512, 20, compile_=True),
               gflops_per_image=eager['gflops_per_image'])
    out['compiled_over_eager'] = round(out['compiled']['images_per_second'] / eager['images_per_second'], 3)
    _assert_floor(dev, out, [eager['images_per_second'], out['compiled']['images_per_second']])
    return out


@check
def other_backbones_batch256(dev, quick):
    "ResNeXt-50 32x4d (ImageNet-LT) and ResNet-152 (Places-LT) at batch 256, bf16, channels_last: each above its floor."
    needs_cuda(dev)
    out = {arch: _throughput(arch, dev, 256, 10, classes=1000 if arch != 'resnet152' else 365)
           for arch in ('resnext50_32x4d', 'resnet152')}
    for arch, fig in out.items():
        _assert_floor(dev, fig, [fig['images_per_second']])
    return out


@check
def jpeg_loader_keeps_up(dev, quick):
    "`loader_benchmark`: the JPEG pipeline at the engine's default worker count feeds at least the model's steady-state step rate."
    arch = 'resnet8' if quick else 'resnet50'
    r = loader_benchmark(num_images=48 if quick else 512, batch_size=16 if quick else 64, arch=arch,
                         steps=2 if quick else 10, device=dev.type)
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
    if dev.type != 'cuda': raise Skip('the loader-vs-step threshold is for a GPU step; CPU figures measured', out)
    assert r['loader_images_per_second'] >= r['model_images_per_second'], out
    return out


@check
def exact_resume_deterministic(dev, quick):
    "CUDA, deterministic: 1 epoch + resume to 2 gives the weights and predictions of 2 epochs at once."
    with tempfile.TemporaryDirectory() as d:
        kw = dict(device=dev.type, deterministic=True, verbose=False, progress=False, epochs=2, warmup_epochs=1, milestones=[1], drw_epoch=1)
        a = train(out_dir=f'{d}/a', **kw)
        train(out_dir=f'{d}/b', **{**kw, 'epochs': 1})
        b = train(out_dir=f'{d}/b', resume=True, **kw)
        wa, wb = (torch.load(f'{d}/{k}/checkpoint.pt', weights_only=True)['model'] for k in 'ab')
        same_weights = all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a['true_class_prob'] == b['true_class_prob'] and same_weights, 'resumed run differs'
    return dict(amp=a['params']['amp'], top1=a['top1']['all'])


@check
def corrupt_jpeg_is_named(dev, quick):
    "A corrupt JPEG in a split list: the run stops with one line naming the file."
    with tempfile.TemporaryDirectory() as d:
        paths = _photo_tree(d, 16, size=(64, 48))
        Path(d, paths[3]).write_bytes(b'not a jpeg')
        (Path(d) / 'list.txt').write_text(''.join(f'{p} {int(p[0]) % 2}\n' for p in paths))
        r = subprocess.run([sys.executable, '-m', 'ala_paper.train', '--dataset', 'split-list', '--data_root', d,
                            '--train_list', 'list.txt', '--test_list', 'list.txt', '--arch', 'resnet8', '--device', dev.type,
                            '--batch_size', '8', '--workers', '2', '--epochs', '1', '--out_dir', f'{d}/run', '--quiet'],
                           capture_output=True, text=True, timeout=300)
    line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''
    assert r.returncode != 0 and line.startswith('error: ') and paths[3] in line, r.stderr[-2000:]
    return dict(error=line)


@check
def ddp_weighted_grad_and_augmentation(dev, quick):
    """Two processes through the engine (tests/ddp_weighted_grad.py): the class-weighted loss's gradient equals one
    process on the same global batch (the global weight sum), and each rank draws its own augmentation.
    CPU: gloo; one GPU: gloo on CUDA tensors, both ranks on it (NCCL refuses that); two GPUs or more: NCCL."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                            str(ROOT / 'tests' / 'ddp_weighted_grad.py'), 'engine', dev.type, f'{d}/out.pt'],
                           capture_output=True, text=True, timeout=300, env=env, cwd=d)
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-2500:]
        res = torch.load(f'{d}/out.pt', weights_only=True)
    ref = res['one_process_grads']
    grad_err = max(((res['ddp_grads'][k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
    p0, p1 = res['probes']
    out = dict(backend=res['backend'], world=res['world'], device=res['device'], grad_rel_error=grad_err,
               probe_pixels_differing=round((p0 != p1).float().mean().item(), 3),
               shared_image_seeds=len(set(res['seeds'][0]) & set(res['seeds'][1])))
    assert grad_err < 1e-5, f'2-process gradient differs from one process on the same global batch: {out}'
    assert out['probe_pixels_differing'] > 0 and out['shared_image_seeds'] == 0, f'ranks draw the same augmentation: {out}'
    return out


@check
def nccl_train_two_gpus(dev, quick):
    "`train()` under torchrun over NCCL on two GPUs with SyncBatchNorm: one result, every test image predicted once."
    needs_cuda(dev)
    if torch.cuda.device_count() < 2: raise Skip('needs two GPUs (the DDP item above ran gloo on one)')
    from ala_paper.data import load_dataset
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m',
                            'ala_paper.train', '--epochs', '2', '--sync_bn', 'true', '--out_dir', d, '--quiet'],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(Path(d, 'results.json').read_text())
    n_test = len(load_dataset('synthetic-lt').test)
    out = dict(images_per_second=res['images_per_second'], top1=res['top1']['all'], world_size=res['env']['world_size'],
               test_predictions=len(res['test_targets']), test_images=n_test, batchnorm=res['batchnorm'])
    assert out['world_size'] == 2 and out['test_predictions'] == n_test, out
    assert res['batchnorm']['sync_bn'] and res['batchnorm']['statistics_over'] == 2 * res['batchnorm']['per_process'], out
    return out


# ---------------------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (a CPU smoke run of the script itself)')
    ap.add_argument('--out', help='JSON report (default: figures/gpu_check_<gpu>.json)')
    ap.add_argument('--only', nargs='*', help='run only these checks, in this order')
    a = ap.parse_args(argv)
    by_name = {fn.__name__: fn for fn in CHECKS}
    if a.only and set(a.only) - set(by_name):
        print(f"error: no check {sorted(set(a.only) - set(by_name))[0]!r}; the checks are {', '.join(by_name)}", file=sys.stderr)
        return 2
    todo = [by_name[n] for n in a.only] if a.only else CHECKS
    if a.device == 'cuda' and not torch.cuda.is_available():
        print('error: no CUDA device visible to torch (nvidia-smi? driver too old for this torch?); '
              'use --device cpu --quick for a smoke run', file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'
    out = Path(a.out or ROOT / 'figures' / f"gpu_check_{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json")
    report = dict(commit=git_commit(), started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), device=name, quick=a.quick,
                  result='running', checks={})
    out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    for fn in todo:
        t0 = time.time()
        try:
            rec = dict(status='passed', figures=fn(dev, a.quick))
        except Skip as e:
            rec = dict(status='not run', reason=str(e), figures=e.figures)
        except Exception as e:   # a failed assertion or a crash: both fail the check, with the reason
            rec = dict(status='failed', error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-3000:])
        rec['seconds'] = round(time.time() - t0, 1)
        report['checks'][fn.__name__] = rec
        report['seconds'] = round(time.time() - t_all, 1)
        atomic_write_json(report, out)            # after every item: a timeout keeps what ran
        print(f"{rec['status'].upper():7s} {fn.__name__} ({rec['seconds']} s) "
              f"{rec.get('error') or rec.get('reason') or json.dumps(rec.get('figures'))[:300]}", flush=True)
        if dev.type == 'cuda': torch.cuda.empty_cache()
    failed = [k for k, v in report['checks'].items() if v['status'] == 'failed']
    report['result'] = 'failed' if failed else 'passed'
    atomic_write_json(report, out)
    print(f"{report['result']}: {len(failed)} failed, report in {out}", flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
