#!/usr/bin/env bash
# A few GPU minutes, prepared as one command (issue 20): the GPU check first (at most 3 minutes), then the
# CIFAR-10-LT bench table at the 200-epoch protocol (12 training rows; pc-softmax re-reads ce's logits), the
# missing runs first, N runs at once on the GPU (separate processes, each its own run folder and checkpoint).
# Everything lands in DEST, ready to commit: DEST/gpu_check.json, DEST/runs/bench/<row>/<arch>/seed<k>/results.json
# (with checkpoint.pt and test_logits.npy beside it) and DEST/gpu_run.json, the summary. It stops cleanly before
# --minutes: runs still going get SIGTERM and keep their last per-epoch checkpoint; the same command later resumes
# them exactly (tests/test_train.py checks exact resume after SIGKILL).
#
#   bash tests/gpu_run.sh DEST [--minutes 12] [--jobs 12] [--seeds 0 1 ...] [--data_root data] [--epochs E]
#                              [--data_tar FILE] [--pack DIR]
#   bash tests/gpu_run.sh DEST --smoke      # CPU smoke run (CI, tests/test_gpu_check.py): tiny CIFAR-format
#                                           # data made on the fly, 2 rows x 2 epochs, 2 runs at once, ~1 minute
#
# Data: CIFAR-10's python pickles or its image folders (train/<class>/*, test/<class>/*) in --data_root (data/README.md),
# or --data_tar FILE, a .tar / .tar.xz / .tar.gz of those folders, extracted once into DEST/data. The GPU machine
# may have no internet, and what travels to it is limited (64 MiB): the shared JPEG copy xz-compresses to ~19 MB,
#   xz -T0 -c ../shared/datasets/cifar10-jpeg.tar > data/cifar10-jpeg.tar.xz      (git ignores data/*.tar.xz)
# and gpu_run.json records the sha256 of the tar inside, to compare with ../shared/datasets/README.md.
# --pack DIR: at the end, also writes DEST's results into at most 8 files of at most 15 MiB in DIR (what a lent
# GPU machine sends back): gpu_check.json, gpu_run.json, runs.tar.gz (every file of DEST/runs but the checkpoints;
# `tar -xzf runs.tar.gz -C DEST` restores them) and checkpoints-K.tar (the checkpoints, to resume elsewhere).
# A prepared call on a lent machine (runs/ is ignored, so a warm machine keeps DEST between calls):
#   bash tests/gpu_run.sh runs/gpu --minutes 8 --data_tar data/cifar10-jpeg.tar.xz --pack "$OUT"
#
# RUNTIME ESTIMATE (an estimate: no line of this has run on a GPU). Measured here: ResNet-32 on 32x32 images costs
# 0.412 GFLOP per training image (torch's FlopCounterMode, forward + backward); one CPU thread of this project's
# machine trains 63 images/s (26 GFLOP/s). One run: 12,406 images x 200 epochs = 2.48 M images = 1.02 PFLOP (11 h on
# that CPU thread). 12 runs: 12.3 PFLOP. H200 datasheet: 989 TFLOP/s dense bf16; ResNet-32's small convolutions,
# packed 12 processes to a GPU, are assumed to reach 3 % of it (30 TFLOP/s) -> 12.3e15 / 30e12 = 410 s, about 7
# minutes, plus a minute of start-up and testing. Per run 19,400 steps of ~400 kernel launches (~4 ms of CPU time
# a step) = 80 s of launch time on its own CPU core: not the bound with 12 processes on 16 cores.
# The step-level equivalence with the authors' code is tests/test_upstream_step.py: run it at the same commit
# before committing these results, and say beside them if it does not pass.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { echo "error: usage: bash tests/gpu_run.sh DEST [--minutes M] [--jobs N] [--seeds S ...] [--data_root DIR] [--epochs E] [--smoke]" >&2; exit 2; }
DEST=$1; shift
MINUTES=12; JOBS=12; SEEDS=0; DATA_ROOT=data; SMOKE=0; EPOCHS=; DATA_TAR=; PACK=
need() { [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || { echo "error: $1 needs a value (see the top of tests/gpu_run.sh)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --minutes|--jobs|--epochs|--data_root|--data_tar|--pack) need "$@" ;;
  esac
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --data_root) DATA_ROOT=$2; shift 2 ;;
    --data_tar) DATA_TAR=$2; shift 2 ;;
    --pack) PACK=$2; shift 2 ;;
    --seeds) shift; SEEDS=""; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do SEEDS="$SEEDS $1"; shift; done ;;
    --smoke) SMOKE=1; JOBS=2; shift ;;
    *) echo "error: unknown option $1 (see the top of tests/gpu_run.sh)" >&2; exit 2 ;;
  esac
done
for pair in "--minutes:$MINUTES" "--jobs:$JOBS" "--epochs:${EPOCHS:-1}"; do
  case ${pair#*:} in ''|*[!0-9]*|0) echo "error: ${pair%%:*} ${pair#*:}: give a whole number of 1 or more" >&2; exit 2 ;; esac
done
for s in $SEEDS; do case $s in *[!0-9]*) echo "error: --seeds $s: seeds are whole numbers (0 1 2 ...)" >&2; exit 2 ;; esac; done
[ -n "${SEEDS// /}" ] || { echo "error: --seeds needs at least one seed" >&2; exit 2; }
# the data first: a missing or wrong data path ends here, before minutes of GPU check
if [ -n "$DATA_TAR" ]; then [ -f "$DATA_TAR" ] || { echo "error: --data_tar $DATA_TAR is not a file (see the top of tests/gpu_run.sh)" >&2; exit 2; }
elif [ $SMOKE = 0 ] && [ ! -d "$DATA_ROOT/cifar-10-batches-py" ] && ! { [ -d "$DATA_ROOT/train" ] && [ -d "$DATA_ROOT/test" ]; }; then
  echo "error: $DATA_ROOT holds neither cifar-10-batches-py/ (CIFAR-10's python pickles) nor train/ and test/ class folders: pass --data_root DIR or --data_tar FILE (data/README.md, the top of tests/gpu_run.sh)" >&2; exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # ala_paper from this checkout, installed or not
PY=${PYTHON:-python3}   # the Python that holds PyTorch (a GPU image may have no `python`); PYTHON=... to choose
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE GPU_RUN_DEADLINE=$(( $(date +%s) + MINUTES * 60 - 30 ))

# 1. the GPU check, most telling items first; at most 3 minutes (its report is rewritten after every item)
if [ $SMOKE = 1 ]; then CHECK=(--device cpu --quick --only cosine_head_precision); LIMIT=120
else CHECK=(--only environment cosine_head_precision ddp_weighted_grad_and_augmentation engine_fp16_step
            channels_last_as_exact exact_resume_deterministic corrupt_jpeg_is_named nccl_train_two_gpus
            resnet50_batch512_bf16 other_backbones_batch256 jpeg_loader_keeps_up); LIMIT=180; fi
timeout $LIMIT "$PY" tests/gpu_check.py "${CHECK[@]}" --out "$DEST/gpu_check.json" \
  && echo "gpu check passed" || echo "gpu check: FAILED or cut at ${LIMIT} s (see $DEST/gpu_check.json); the runs go on"

# 2. the bench table on CIFAR-10-LT, N runs at once, stopped cleanly at the deadline
GPU_RUN_DATA_TAR=$DATA_TAR GPU_RUN_PACK=$PACK exec "$PY" - "$DEST" "$JOBS" "$SMOKE" "$DATA_ROOT" "$EPOCHS" $SEEDS <<'PY'
import hashlib, json, os, shutil, signal, subprocess, sys, tarfile, time
from pathlib import Path
from ala_paper.core import atomic_write_json, git_commit
from ala_paper.sweep import plan
from ala_paper.cli import cli_args

dest, jobs, smoke, data_root, epochs, seeds = (Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1', sys.argv[4],
                                              sys.argv[5], sys.argv[6:])
deadline = int(os.environ['GPU_RUN_DEADLINE'])
params, rows = dict(data_root=data_root), None
if smoke:                                    # tiny CIFAR-format pickles, 2 rows, 2 epochs, on the CPU
    from ala_paper.fixtures import make_cifar_pickles
    data_root = params['data_root'] = str(dest / 'smoke_data')
    make_cifar_pickles(data_root, 'cifar10-lt', per_class=40, test_per_class=5)
    params.update(epochs=2, imbalance_ratio=10, device='cpu', batch_size=32)
    rows = ['ce', 'ldam-drw']
if epochs: params['epochs'] = int(epochs)
data_tar, pack, data_sha = os.environ.get('GPU_RUN_DATA_TAR'), os.environ.get('GPU_RUN_PACK'), None
is_cifar = lambda d: (d / 'cifar-10-batches-py').is_dir() or ((d / 'train').is_dir() and (d / 'test').is_dir())
if data_tar:                                 # extracted once into DEST/data; its sha256 is that of the tar inside
    target, sha = dest / 'data', hashlib.sha256()
    st = Path(data_tar).stat()                # the same archive file as last call: no second decompression
    key, marker = dict(archive=str(Path(data_tar).resolve()), bytes=st.st_size, mtime_ns=st.st_mtime_ns), target / '.extracted'
    try: done = json.loads(marker.read_text())
    except (OSError, ValueError): done = {}
    try:
        if isinstance(done, dict) and done.get('archive') == key and done.get('sha256'):
            data_sha = done['sha256']
        else:
            import lzma, gzip
            opener = lzma.open if data_tar.endswith('.xz') else gzip.open if data_tar.endswith(('.gz', '.tgz')) else open
            with opener(data_tar, 'rb') as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b''): sha.update(chunk)
            data_sha = sha.hexdigest()
            shutil.rmtree(target, ignore_errors=True)
            print(f"extracting {data_tar} into {target}", flush=True)
            with tarfile.open(data_tar) as tf: tf.extractall(target, filter='data')
            marker.write_text(json.dumps(dict(archive=key, sha256=data_sha)))   # written last: a cut extraction redoes
    except (OSError, EOFError, tarfile.TarError, ValueError) as ex:
        shutil.rmtree(target, ignore_errors=True)
        sys.exit(f"error: --data_tar {data_tar} cannot be read as a tar of CIFAR image folders ({type(ex).__name__}: "
                 f"{str(ex).splitlines()[0] if str(ex) else 'cut short'}): make it again (see the top of tests/gpu_run.sh)")
    found = [d for d in (target, *sorted(target.iterdir())) if d.is_dir() and is_cifar(d)]
    if not found: sys.exit(f"error: --data_tar {data_tar} holds neither train/ and test/ class folders nor "
                           f"cifar-10-batches-py/ at its top or one folder down")
    data_root = params['data_root'] = str(found[0].resolve())
if not is_cifar(Path(data_root)):
    sys.exit(f"error: {data_root} holds neither cifar-10-batches-py/ (CIFAR-10's python pickles) nor train/ and test/ "
             f"class folders: pass --data_root DIR or --data_tar FILE (data/README.md, the top of tests/gpu_run.sh)")
entries = plan('bench', dataset='cifar10-lt', seeds=[int(s) for s in seeds], runs_dir=dest / 'runs', rows=rows,
               params=params)
order = {'resume': 0, 'new': 1}              # the missing runs: seed by seed, interrupted ones first
todo = sorted((e for e in entries if e.state in order), key=lambda e: (e.seed, order[e.state]))
print(f"{len(entries)} runs: {sum(e.state == 'done' for e in entries)} done, {len(todo)} to run, {jobs} at once, "
      f"{'on the CPU (smoke)' if smoke else 'on the GPU'}; stop at {time.strftime('%H:%M:%S', time.localtime(deadline))}",
      flush=True)
env = dict(os.environ, OMP_NUM_THREADS='1')
running, report = {}, {e.out_dir.relative_to(dest).as_posix(): dict(state=e.state, note=e.note) for e in entries}
def start(e):
    e.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, '-m', 'ala_paper.train', *cli_args(**e.params, out_dir=str(e.out_dir)),
           '--progress', 'false', *(['--resume'] if e.state == 'resume' else [])]
    log = open(e.out_dir / 'train.log', 'a')
    print(f"{'resume' if e.state == 'resume' else 'start':8s} {e.out_dir.relative_to(dest).as_posix()}", flush=True)
    running[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)] = (e, time.time(), log)
while todo or running:
    while todo and len(running) < jobs and time.time() < deadline - 15: start(todo.pop(0))
    for proc in [p for p in running if p.poll() is not None]:
        e, t0, log = running.pop(proc); log.close()
        key = e.out_dir.relative_to(dest).as_posix()
        done = proc.returncode == 0 and (e.out_dir / 'results.json').is_file()
        last = (e.out_dir / 'train.log').read_text().strip().splitlines()[-1:] or ['']
        report[key].update(state='done' if done else 'stopped' if proc.returncode < 0 else 'failed',
                           seconds=round(time.time() - t0, 1), last_line=last[0][-300:])
        print(f"{report[key]['state']:8s} {key} ({report[key]['seconds']} s) {last[0][-200:]}", flush=True)
    if time.time() >= deadline and running:  # before the limit: each run keeps its last per-epoch checkpoint
        for proc in running: proc.send_signal(signal.SIGTERM)
        todo = []
    if not todo and not running: break
    time.sleep(0.5)
def pack_into(folder: Path) -> dict:
    "DEST's results in at most 8 files of at most 15 MiB (what comes back from a lent GPU machine)."
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in (dest / 'runs').rglob('*') if p.is_file())
    with tarfile.open(folder / 'runs.tar.gz', 'w:gz') as tf:
        for p in files:
            if p.name != 'checkpoint.pt': tf.add(p, p.relative_to(dest).as_posix())
    chunks, limit = [[]], 15 << 20
    for p in (p for p in files if p.name == 'checkpoint.pt'):
        if chunks[-1] and sum(q.stat().st_size for q in chunks[-1]) + p.stat().st_size > limit: chunks.append([])
        chunks[-1].append(p)
    packed = {'runs.tar.gz': sum(p.name != 'checkpoint.pt' for p in files)}
    for k, chunk in enumerate([c for c in chunks if c][:5], 1):
        with tarfile.open(folder / f'checkpoints-{k}.tar', 'w') as tf:
            for p in chunk: tf.add(p, p.relative_to(dest).as_posix())
        packed[f'checkpoints-{k}.tar'] = len(chunk)
    left = sum(len(c) for c in chunks[5:])
    if left: packed['checkpoints_left_out'] = left
    return packed

packed = pack_into(Path(pack)) if pack else None
summary = dict(commit=git_commit(), finished=time.strftime('%Y-%m-%d %H:%M:%S %Z'), smoke=smoke, jobs=jobs, runs=report,
               data_root=data_root, data_tar=data_tar, data_tar_sha256=data_sha, pack=packed,
               gpu_check=json.loads((dest / 'gpu_check.json').read_text()).get('result') if (dest / 'gpu_check.json').is_file() else None,
               equivalence_note='the step-level equivalence with the authors\' code is tests/test_upstream_step.py: '
                                'check it passes at this commit before committing these results')
atomic_write_json(summary, dest / 'gpu_run.json')
if pack:
    for f in ('gpu_check.json', 'gpu_run.json'):
        if (dest / f).is_file() and Path(pack).resolve() != dest.resolve(): shutil.copy2(dest / f, Path(pack) / f)
    print(f"packed into {pack}: {', '.join(f'{k} ({v})' for k, v in packed.items())}, gpu_check.json, gpu_run.json", flush=True)
states = [v['state'] for v in report.values()]
print(f"{states.count('done')} of {len(states)} runs done; summary in {dest / 'gpu_run.json'}", flush=True)
sys.exit(0 if 'failed' not in states else 1)
PY
