"""GPU check of the training engine: every item asserts, figures are measured, and a JSON report is written.

Run on a machine with a CUDA GPU, from the repository root with the project installed:

    bash tests/gpu_check.sh                 # writes figures/gpu_check_<gpu>.json, exits 1 if any check failed

`--device cpu --quick` runs the same script with tiny sizes on a CPU (CUDA-only checks are reported as
skipped, never as passed): CI uses it to keep the script itself working. Budget on one GPU: under 10 minutes.
"""
import argparse, json, os, platform, re, subprocess, sys, tempfile, time, traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ala_paper.data import ImageListDataset, make_transforms
from ala_paper.losses import make_loss
from ala_paper.models import build_model
from ala_paper.train import _photo_tree, auto_amp, git_commit, layout_gradient_error, make_batches, project_root, train

ROOT = project_root()
CHECKS = []


def check(fn):
    "Register a check: it returns a dict of figures and raises AssertionError (or Skip) when it cannot pass."
    CHECKS.append(fn); return fn


class Skip(Exception): pass


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def peak_gib(dev):
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == 'cuda' else None


def needs_cuda(dev):
    if dev.type != 'cuda': raise Skip('needs CUDA')


# ---------------------------------------------------------------------------------------------------------------

@check
def environment(dev, quick):
    out = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(), device=str(dev))
    if dev.type == 'cuda':
        cap = torch.cuda.get_device_capability(dev)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        out.update(gpu=torch.cuda.get_device_name(dev), capability=f'{cap[0]}.{cap[1]}', bf16_native=native,
                   gpus=torch.cuda.device_count(), amp_auto=auto_amp(), cudnn=torch.backends.cudnn.version())
        assert out['amp_auto'] == ('bf16' if cap[0] >= 8 and native else 'fp16'), out
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
def grad_scaler_skips_inf(dev, quick):
    "fp16 + GradScaler: a step whose gradients hold inf is skipped and the scale halves."
    needs_cuda(dev)
    net = torch.nn.Linear(4, 2).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cuda', init_scale=2.0 ** 10)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.autocast('cuda', dtype=torch.float16):
        loss = net(torch.randn(3, 4, device=dev)).sum() * float('inf')
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())), 'parameters changed on an inf step'
    assert scaler.get_scale() == 2.0 ** 9, scaler.get_scale()
    return dict(scale_after=scaler.get_scale())


def _throughput(arch, dev, batch, steps, compile_=False, classes=8142):
    torch.manual_seed(0)
    model = build_model(arch, classes, cosine=True).to(dev).to(memory_format=torch.channels_last)
    crit = make_loss('ala', [max(2, int(1000 * 0.01 ** (i / (classes - 1)))) for i in range(classes)], validate=False).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=dev)
    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = run(x)
        loss = crit(out.float(), y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter(); step(); step(); sync(dev); warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps): step()
    sync(dev)
    rate = steps * batch / (time.perf_counter() - t0)
    del model, opt, run
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return dict(images_per_second=round(rate, 1), peak_gib=peak_gib(dev), warmup_seconds=round(warm, 1), batch=batch)


@check
def resnet50_batch512_bf16(dev, quick):
    "ResNet-50, batch 512, bf16 autocast, channels_last, 8,142-class ALA head: eager and compiled."
    needs_cuda(dev)
    out = dict(eager=_throughput('resnet50', dev, 512, 20))
    out['compiled'] = _throughput('resnet50', dev, 512, 20, compile_=True)
    assert out['eager']['images_per_second'] > 0 and out['compiled']['images_per_second'] > 0
    out['compiled_over_eager'] = round(out['compiled']['images_per_second'] / out['eager']['images_per_second'], 3)
    return out


@check
def other_backbones_batch256(dev, quick):
    "ResNeXt-50 32x4d (ImageNet-LT) and ResNet-152 (Places-LT) at batch 256, bf16, channels_last."
    needs_cuda(dev)
    return {arch: _throughput(arch, dev, 256, 10, classes=1000 if arch != 'resnet152' else 365)
            for arch in ('resnext50_32x4d', 'resnet152')}


@check
def jpeg_loader_vs_split_list_epoch(dev, quick):
    "The JPEG pipeline alone, then one training epoch of split-list on the same generated JPEGs: the ratio."
    n = 96 if quick else 3000
    with tempfile.TemporaryDirectory() as d:
        paths = _photo_tree(d, n, size=(500, 375))
        (Path(d) / 'list.txt').write_text(''.join(f'{p} {p[0]}\n' for p in paths))
        workers = min(16, os.cpu_count() or 1)
        data = ImageListDataset(d, paths, [int(p[0]) for p in paths], make_transforms('imagenet').train_sample)
        batches = make_batches(data, 64, torch.utils.data.RandomSampler(data), workers, dev, drop_last=True, seed=0)
        t0 = time.perf_counter(); seen = sum(len(x) for x, _ in batches); sync(dev)
        loader = seen / (time.perf_counter() - t0)
        arch = 'resnet8' if quick else 'resnet50'
        r = train(dataset='split-list', data_root=d, train_list='list.txt', test_list='list.txt', arch=arch, epochs=1,
                  batch_size=64 if quick else 256, device=dev.type, workers=workers, out_dir=f'{d}/run', verbose=False,
                  progress=False)
    out = dict(images=n, workers=workers, loader_images_per_second=round(loader, 1),
               train_images_per_second=round(r['images_per_second'], 1), arch=arch,
               train_over_loader=round(r['images_per_second'] / loader, 3))
    assert loader > 0 and r['images_per_second'] > 0
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
def nccl_ddp_two_gpus(dev, quick):
    "Two processes over NCCL (when there are two GPUs): one result, every test image once."
    needs_cuda(dev)
    if torch.cuda.device_count() < 2: raise Skip('one GPU')
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m',
                            'ala_paper.train', '--epochs', '2', '--out_dir', d, '--quiet'], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(Path(d, 'results.json').read_text())
    assert res['env']['world_size'] == 2 and len(res['test_targets']) == len(set(range(len(res['test_targets']))))
    return dict(images_per_second=res['images_per_second'], top1=res['top1']['all'])


# ---------------------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (a CPU smoke run of the script itself)')
    ap.add_argument('--out', help='JSON report (default: figures/gpu_check_<gpu>.json)')
    ap.add_argument('--only', nargs='*', help='run only these checks')
    a = ap.parse_args(argv)
    if a.device == 'cuda' and not torch.cuda.is_available():
        print('error: no CUDA device visible to torch (nvidia-smi? driver too old for this torch?); '
              'use --device cpu --quick for a smoke run', file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'
    out = Path(a.out or ROOT / 'figures' / f"gpu_check_{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json")
    report = dict(commit=git_commit(), started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), device=name, quick=a.quick, checks={})
    t_all = time.time()
    for fn in CHECKS:
        if a.only and fn.__name__ not in a.only: continue
        t0 = time.time()
        try:
            rec = dict(status='passed', figures=fn(dev, a.quick))
        except Skip as e:
            rec = dict(status='skipped', reason=str(e))
        except Exception as e:   # a failed assertion or a crash: both fail the check, with the reason
            rec = dict(status='failed', error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-3000:])
        rec['seconds'] = round(time.time() - t0, 1)
        report['checks'][fn.__name__] = rec
        print(f"{rec['status'].upper():7s} {fn.__name__} ({rec['seconds']} s) "
              f"{rec.get('error') or rec.get('reason') or json.dumps(rec.get('figures'))[:300]}", flush=True)
        if dev.type == 'cuda': torch.cuda.empty_cache()
    report['seconds'] = round(time.time() - t_all, 1)
    failed = [k for k, v in report['checks'].items() if v['status'] == 'failed']
    report['result'] = 'failed' if failed else 'passed'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + '\n')
    print(f"{report['result']}: {len(failed)} failed, report in {out}", flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
