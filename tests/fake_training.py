"""A stand-in for nbs/train.ipynb that writes a fake finished run at once (ala_paper.fixtures.write_fake_run): the
tests of the sweep and of the command chains run papermill on it instead of training."""
import nbformat

FAKE_TRAIN = '''
import json, os
from pathlib import Path
from ala_paper.fixtures import write_fake_run
from ala_paper.recipe import PARAM_NAMES
params = {k: v for k, v in globals().items() if k in PARAM_NAMES and k not in ('out_dir', 'device')}
o = Path(out_dir)
o.mkdir(parents=True, exist_ok=True)
with open(o/'calls.log', 'a') as f: f.write(f'resume={resume}\\n')
if resume and not (o/'checkpoint.pt').is_file(): raise ValueError('resume without a checkpoint')
if loss == os.environ.get('FAKE_TRAIN_FAIL_LOSS'): raise RuntimeError('this run fails on purpose')
write_fake_run(o, **params)
print(f'fake epoch 1/1 of {loss}')
'''

def write_fake_train_notebook(path) -> str:
    "Write the stand-in training notebook to `path` (its parameters cell names the defaults papermill overrides)."
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("dataset = 'synthetic-lt'\nloss = 'ala'\nseed = 0\nout_dir = 'runs/default'\n"
                                       "resume = False")
    params.metadata['tags'] = ['parameters']
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_TRAIN)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, path)
    return str(path)
