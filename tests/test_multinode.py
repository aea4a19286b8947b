"""Two torchrun "nodes" on this machine (gloo, c10d rendezvous on 127.0.0.1, one process each) train the same run as
one node with two processes: every number of results.json and the saved test logits are equal, bit for bit. The
commands for real nodes (2 nodes x N GPUs, and `srun torchrun` inside a SLURM allocation) are in nbs/05b_launch.ipynb."""
import os, socket, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.cli import cli_args, run_torchrun
from test_sweep_jobs import computed

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@pytest.mark.slow
def test_two_torchrun_nodes_equal_one_node_with_two_processes(tmp_path, monkeypatch):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    env.pop('IN_TEST', None)
    port, two = free_port(), tmp_path/'two-nodes'
    nodes = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank', str(rank),
                               '--nproc_per_node', '1', '--rdzv_backend', 'c10d', '--rdzv_id', 'ala-test',
                               '--rdzv_endpoint', f'127.0.0.1:{port}', '-m', 'ala_paper.train',
                               *cli_args(epochs=2, out_dir=str(two), verbose=False)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [node.communicate(timeout=900)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outs
    monkeypatch.setenv('OMP_NUM_THREADS', '1')   # run_torchrun's processes inherit it
    run_torchrun(2, epochs=2, out_dir=str(tmp_path/'one-node'), verbose=False)
    (a, la), (b, lb) = computed(tmp_path, 'two-nodes'), computed(tmp_path, 'one-node')
    assert a['params']['world_size'] == b['params']['world_size'] == 2
    assert a == b
    assert la.tobytes() == lb.tobytes()
