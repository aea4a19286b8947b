#!/usr/bin/env bash
# GPU check of the ala-paper training engine (issue 4): AMP (bf16 / fp16+GradScaler) and channels_last train
# steps of ResNet-50 through ala_paper.train.train_epoch, with throughput; then train() end to end on CUDA
# (synthetic-lt, 2 epochs, then torch.compile), and NCCL DDP if there are >= 2 GPUs. Under 5 minutes on one H100.
# Usage, from the repository root, with the project installed (pip install -e .):  bash tests/gpu_check.sh
# Not run by CI (CI has no GPU) and not yet run on a GPU by this project.
set -euo pipefail
export PYTHONUNBUFFERED=1
python - <<'EOF'
import time, tempfile, torch
from ala_paper.models import build_model
from ala_paper.losses import make_loss
from ala_paper.train import train_epoch, lr_factor, train
assert torch.cuda.is_available(), "no CUDA device"
dev = torch.device('cuda'); print(torch.__version__, torch.cuda.get_device_name(), flush=True)
C, B, STEPS = 1000, 128, 30
counts = [int(1000 * 0.01 ** (i / (C - 1))) + 1 for i in range(C)]
g = torch.Generator(device='cuda').manual_seed(0)
batches = [(torch.randn(B, 3, 224, 224, device=dev, generator=g), torch.randint(0, C, (B,), device=dev, generator=g)) for _ in range(4)]
for amp, cl in [('off', False), ('bf16', False), ('bf16', True), ('fp16', True)]:
    torch.manual_seed(0)
    model = build_model('resnet50', C, cosine=True).to(dev)
    if cl: model = model.to(memory_format=torch.channels_last)
    crit = make_loss('ala', counts).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 100, 1, [60], 0.1))
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
    scaler = torch.amp.GradScaler('cuda') if amp == 'fp16' else None
    train_epoch(model, batches[:2], crit, opt, sched, scaler, dev, dtype, cl)            # warm-up (cudnn autotune)
    torch.cuda.synchronize(); t = time.perf_counter()
    loader = (batches[i % len(batches)] for i in range(STEPS))
    loss_sum, correct, n = train_epoch(model, loader, crit, opt, sched, scaler, dev, dtype, cl).tolist()
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"resnet50 train step amp={amp:4s} channels_last={cl!s:5s}: {n / dt:7.0f} img/s  (batch {B}, mean loss {loss_sum / n:.3f}, "
          f"max mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)", flush=True)
    del model, opt; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
with tempfile.TemporaryDirectory() as d:
    t = time.time(); r = train(epochs=2, device='cuda', out_dir=d, verbose=False)
    print(f"train() synthetic-lt on cuda: {time.time() - t:.0f} s, amp {r['params']['amp']}, channels_last {r['params']['channels_last']}, "
          f"{r['images_per_second']:.0f} img/s, top1 {r['top1']}", flush=True)
    t = time.time(); r = train(epochs=2, device='cuda', out_dir=d + '/c', compile=True, amp='fp16', verbose=False)
    print(f"train(compile=True, amp=fp16): {time.time() - t:.0f} s, {r['images_per_second']:.0f} img/s, top1 all {r['top1']['all']:.1f}", flush=True)
EOF
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  d=$(mktemp -d)
  timeout 240 torchrun --standalone --nproc_per_node 2 -m ala_paper.train --epochs 2 --out_dir "$d" --quiet
  python -c "import json,sys; r=json.load(open('$d/results.json')); print('NCCL DDP x2:', r['env']['world_size'], 'processes,', round(r['images_per_second']), 'img/s, top1', r['top1'])"
else
  echo "one GPU: NCCL DDP not exercised"
fi
