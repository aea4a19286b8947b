"""Helper of tests/test_train.py, run by torchrun with 2 gloo processes: gradients of a class-weighted loss under DDP.

Usage: torchrun --nproc_per_node 2 tests/ddp_weighted_grad.py {global|naive} OUT.pt"""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ala_paper.losses import make_loss
from ala_paper.train import batch_share, weight_total

BATCH = dict(x=torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), y=torch.tensor([0, 0, 0, 0, 0, 1, 2, 3]))
WEIGHT = torch.tensor([0.1, 1.0, 2.0, 5.0])     # rank 0 sees only class 0, rank 1 all classes: unequal weight sums


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(6, 4)


if __name__ == '__main__':
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    net = model()
    ddp = DistributedDataParallel(net)          # keep it referenced: its hooks average the gradients in backward()
    crit = make_loss('ce', [100, 10, 5, 2], weight=WEIGHT)
    part = slice(4 * rank, 4 * rank + 4)
    loss = crit(ddp(BATCH['x'][part]), BATCH['y'][part])
    if mode == 'global':   # what train() does: this process's share of the global batch's weighted mean
        loss = batch_share(loss, crit.weight, BATCH['y'][part], weight_total(crit.weight, [BATCH['y'][part]]), 1, 2)
    loss.backward()
    if rank == 0: torch.save({n: p.grad for n, p in net.named_parameters()}, out)
    dist.destroy_process_group()
