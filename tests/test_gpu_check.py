"The GPU check script itself, in its CPU smoke mode: every check runs, or says why it is skipped; the report is complete."
import json, subprocess, sys
from pathlib import Path

from ala_paper.train import project_root

ROOT = project_root()
CUDA_ONLY = {'channels_last_as_exact', 'grad_scaler_skips_inf', 'resnet50_batch512_bf16', 'other_backbones_batch256', 'nccl_ddp_two_gpus'}


def run(tmp_path, *args):
    out = tmp_path / 'report.json'
    r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_check.sh'), '--device', 'cpu', '--quick', '--out', str(out), *args],
                       capture_output=True, text=True, timeout=600)
    return r, json.loads(out.read_text())


def test_gpu_check_cpu_smoke(tmp_path):
    r, rep = run(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    checks = rep['checks']
    assert {k for k, v in checks.items() if v['status'] == 'skipped'} == CUDA_ONLY     # never counted as passed
    assert all(v['status'] == 'passed' for k, v in checks.items() if k not in CUDA_ONLY)
    assert checks['cosine_head_precision']['figures']['bf16']['head_dtype'] == 'torch.float32'
    assert 'cannot decode image' in checks['corrupt_jpeg_is_named']['figures']['error']
    assert rep['result'] == 'passed' and rep['commit']


def test_gpu_check_without_cuda_refuses_plainly(tmp_path):
    import torch
    if torch.cuda.is_available(): return
    r = subprocess.run(['bash', str(ROOT / 'tests' / 'gpu_check.sh')], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith('error: no CUDA device')
