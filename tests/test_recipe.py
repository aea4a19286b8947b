"The recipe is torch-free: the sweep plans runs and the report reads them without the training engine."
import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'PYTHONPATH': str(ROOT)}


def imports_after(module: str) -> set:
    "The modules loaded by a fresh `import module`, among torch and the training engine."
    code = f"import sys, {module}; print(' '.join(m for m in ('torch', 'ala_paper.train') if m in sys.modules))"
    r = subprocess.run([sys.executable, '-c', code], env=ENV, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(r.stdout.split())


@pytest.mark.parametrize('module,loaded', [('ala_paper.recipe', set()), ('ala_paper.sweep', set()),
                                           ('ala_paper.report', {'torch'})])
def test_recipe_users_do_not_import_the_engine(module, loaded):
    assert imports_after(module) == loaded


def test_the_engine_resolves_the_recipe_and_the_cpu_like_the_sweep():
    "`train.resolve_params(device='cpu')` is the recipe's `resolve_on_cpu`: the sweep recognises the runs train makes."
    from ala_paper.recipe import resolve_on_cpu
    from ala_paper.engine import resolve_params
    for kw in (dict(), dict(dataset='imagenet-lt', loss='ce'), dict(dataset='cifar10-lt', amp='bf16', channels_last=True)):
        assert resolve_params(device='cpu', **kw) == resolve_on_cpu(**kw)
