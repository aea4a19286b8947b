"""Helper run by torchrun with 2 processes: gradients of a class-weighted loss under DDP, and each rank's augmentation.

Usage: torchrun --nproc_per_node 2 tests/ddp_weighted_grad.py {global|naive} OUT.pt    (tests/test_train.py, gloo, CPU)
       torchrun --nproc_per_node 2 tests/ddp_weighted_grad.py engine {cpu|cuda} OUT.pt (tests/gpu_check.py)

`engine` goes through the training engine's own code: `_step` (the global weight sum) on the same global batch as
one process, and `train_one_epoch`'s augmentation generator applied to one probe batch on every rank. On CUDA each
rank takes GPU `LOCAL_RANK % GPUs`: NCCL when every rank has a GPU of its own, gloo on CUDA tensors when two ranks
share one GPU (NCCL refuses that)."""
import sys, tempfile

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ala_paper.losses import make_loss
from ala_paper.train import batch_share, weight_total

BATCH = dict(x=torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), y=torch.tensor([0, 0, 0, 0, 0, 1, 2, 3]))
WEIGHT = torch.tensor([0.1, 1.0, 2.0, 5.0])     # rank 0 sees only class 0, rank 1 all classes: unequal weight sums
COUNTS = [100, 10, 5, 2]


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(6, 4)


class _Probed(Exception): "Raised by the probe after recording: ends the epoch before any step."


def engine_step_grads(dev, rank, world):
    "Gradients after the engine's `_step` on this rank's half of BATCH (DDP), and plain PyTorch on all of it."
    from ala_paper.train import EpochTotals, Run, _step
    net = model().to(dev)
    ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == 'cuda' else None)
    loss_fn = make_loss('ce', COUNTS, weight=WEIGHT).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    run = Run(params={}, data=None, model=ddp, plain_model=net, loss_fn=loss_fn, opt=opt,
              sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), scaler=None, batches=None, dev=dev,
              rank=rank, world=world)
    part = slice(4 * rank, 4 * rank + 4)
    _step(run, [(BATCH['x'][part].to(dev), BATCH['y'][part].to(dev))], lambda x: x,
          EpochTotals(loss_fn, COUNTS, dev))
    ref = model().to(dev)                     # the definition: the weighted mean over the whole global batch
    loss_fn(ref(BATCH['x'].to(dev)), BATCH['y'].to(dev)).backward()
    return ({n: p.grad.cpu() for n, p in net.named_parameters()}, {n: p.grad.cpu() for n, p in ref.named_parameters()})


def engine_run(dev, out_dir, rank=0, world=1, **kw):
    "The engine's `Run` on synthetic-lt (resnet8, CE), made by `setup` as `train()` makes it."
    from ala_paper.data import load_dataset
    from ala_paper.models import build_model
    from ala_paper.engine import resolve_params
    from ala_paper.train import setup
    params = resolve_params(dataset='synthetic-lt', device=dev.type, epochs=1, batch_size=64, out_dir=out_dir,
                            verbose=False, progress=False, **kw)
    data = load_dataset('synthetic-lt', params['data_root'], seed=params['data_seed'])
    torch.manual_seed(0)
    model = build_model(params['arch'], data.num_classes, cosine=False)
    return setup(params, data, make_loss('ce', data.class_counts), model, None, dev, rank, world)


def engine_augmentation(dev, rank, world):
    "`train_one_epoch`'s batch augmentation (its own generator) on one probe batch, and the per-image seeds."
    from ala_paper.batches import SeededSampler
    from ala_paper.train import train_one_epoch
    with tempfile.TemporaryDirectory() as d:
        run = engine_run(dev, d, rank, world)
        probe, seen = torch.from_numpy(run.data.train.data[:8]).permute(0, 3, 1, 2).to(dev), {}
        batch = run.data.pipeline.train_batch
        def record(x, generator=None, **kw):  # the batch pipeline as train_one_epoch calls it, on the probe
            seen['probe'] = batch(probe, generator=generator, **kw).float().cpu()
            raise _Probed
        run.data.pipeline.train_batch = record
        try: train_one_epoch(run, 0)
        except _Probed: pass
    seeds = [s for _, s in SeededSampler(range(4), run.params['seed'], rank)]
    return seen['probe'], seeds


def engine(kind, out):
    from ala_paper.engine import dist_env
    rank, world, local = dist_env()
    if kind == 'cuda':
        gpus = torch.cuda.device_count()
        dev = torch.device('cuda', local % gpus)
        torch.cuda.set_device(dev)
        backend = 'nccl' if gpus >= world else 'gloo'
    else: dev, backend = torch.device('cpu'), 'gloo'
    dist.init_process_group(backend)
    grads, ref = engine_step_grads(dev, rank, world)
    probe, seeds = engine_augmentation(dev, rank, world)
    everything = [None] * world
    dist.all_gather_object(everything, dict(probe=probe, seeds=seeds))
    if rank == 0:
        torch.save(dict(backend=backend, world=world, device=str(dev), ddp_grads=grads, one_process_grads=ref,
                        probes=[e['probe'] for e in everything], seeds=[e['seeds'] for e in everything]), out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    if sys.argv[1] == 'engine': engine(sys.argv[2], sys.argv[3]); sys.exit()
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    net = model()
    ddp = DistributedDataParallel(net)          # keep it referenced: its hooks average the gradients in backward()
    crit = make_loss('ce', COUNTS, weight=WEIGHT)
    part = slice(4 * rank, 4 * rank + 4)
    loss = crit(ddp(BATCH['x'][part]), BATCH['y'][part])
    if mode == 'global':   # what train() does: this process's share of the global batch's weighted mean
        loss = batch_share(loss, crit.weight, BATCH['y'][part], weight_total(crit.weight, [BATCH['y'][part]]), 1, 2)
    loss.backward()
    if rank == 0: torch.save({n: p.grad for n, p in net.named_parameters()}, out)
    dist.destroy_process_group()
