"Data loaders on tiny trees in each real format (no downloads), every bad input's error, synthetic-lt."
import json, time
from pathlib import Path

import numpy as np
import pytest
import torch

from ala_paper.data import (DATASETS, LTData, load_dataset, read_split_list, cifar_lt_counts, long_tail_select,
                            read_inat_json)
from ala_paper.transforms import make_transforms
from ala_paper.fixtures import make_split_list_tree, make_inat_tree, make_cifar_pickles, fixture_counts
from ala_paper.metrics import shot_groups


def groups_nonempty(counts):
    return {k: len(v) > 0 for k, v in shot_groups(counts).items()}


@pytest.mark.parametrize('dataset', ['imagenet-lt', 'places-lt'])
def test_split_list_benchmarks(tmp_path, dataset):
    counts = make_split_list_tree(tmp_path, dataset, num_classes=12, test_per_class=2)
    d = load_dataset(dataset, tmp_path, transform='cifar')
    assert isinstance(d, LTData) and d.name == dataset and d.transform == 'cifar'
    assert d.class_counts == counts and d.num_classes == 12
    assert len(d.train) == sum(counts) and len(d.test) == 24
    assert all(groups_nonempty(d.class_counts).values())
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    assert load_dataset(dataset, tmp_path).train[0][0].shape == (3, 224, 224)   # default: imagenet
    json.dumps(d.meta)


def test_imagenet_lt_class_names(tmp_path):
    make_split_list_tree(tmp_path, 'imagenet-lt', num_classes=7)
    assert load_dataset('imagenet-lt', tmp_path).class_names[3] == 'n00000003'


def test_split_list_own_data(tmp_path):
    counts = make_split_list_tree(tmp_path, 'split-list', num_classes=7)
    d = load_dataset('split-list', tmp_path, train_list='train.txt', test_list='test.txt')
    assert d.class_counts == counts and d.class_names[2] == 'class_2'
    with pytest.raises(ValueError, match='needs train_list and test_list'):
        load_dataset('split-list', tmp_path)


@pytest.mark.parametrize('fmt', ['json', 'txt'])
def test_inat(tmp_path, fmt):
    counts = make_inat_tree(tmp_path, num_classes=9, val_per_class=2, fmt=fmt)
    d = load_dataset('inat2018', tmp_path, transform='cifar')
    assert d.class_counts == counts and d.num_classes == 9 and len(d.test) == 18
    assert d.train[len(d.train) - 1][1] == 8
    if fmt == 'json': assert d.class_names[4] == 'species_4'


def test_inat_json_id_gaps_are_remapped(tmp_path):
    ids = [3, 10, 11, 40, 41, 42]
    counts = make_inat_tree(tmp_path, num_classes=6, category_ids=ids)
    d = load_dataset('inat2018', tmp_path, transform='cifar')
    assert d.num_classes == 6 and d.class_counts == counts and d.meta['category_ids'] == ids
    assert sorted(set(d.train.targets.tolist())) == list(range(6))


def test_cifar_lt_counts_paper_totals():
    assert sum(cifar_lt_counts(5000, 10, 100)) == 12406
    assert sum(cifar_lt_counts(500, 100, 100)) == 10847
    c = cifar_lt_counts(5000, 10, 100)
    assert c[0] == 5000 and c[-1] == 50 and all(a >= b for a, b in zip(c, c[1:]))


def test_long_tail_select_on_arrays():
    labels = np.repeat(np.arange(10), 500)
    want = cifar_lt_counts(500, 10, 100)
    k = long_tail_select(labels, want, seed=0)
    assert np.bincount(labels[k], minlength=10).tolist() == want
    assert np.array_equal(k, long_tail_select(labels, want, seed=0))
    assert not np.array_equal(k, long_tail_select(labels, want, seed=1))


@pytest.mark.parametrize('dataset,per_class,rho', [('cifar10-lt', 100, 10), ('cifar100-lt', 60, 10)])
def test_cifar_from_pickles(tmp_path, dataset, per_class, rho):
    make_cifar_pickles(tmp_path, dataset, per_class=per_class, test_per_class=3)
    d = load_dataset(dataset, tmp_path, imbalance_ratio=rho, seed=1)
    C = 10 if dataset == 'cifar10-lt' else 100
    assert d.class_counts == cifar_lt_counts(per_class, C, rho) and d.num_classes == C
    assert np.bincount(d.test.targets).tolist() == [3] * C and d.transform == 'cifar'
    x, y = d.train[0]
    assert x.shape == (3, 32, 32)
    d2 = load_dataset(dataset, tmp_path, imbalance_ratio=rho, seed=2)
    assert not np.array_equal(d.train.data, d2.train.data)


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='download=True'):
        load_dataset('cifar10-lt', tmp_path)
    make_cifar_pickles(tmp_path, 'cifar10-lt', per_class=20)
    with pytest.raises(ValueError, match=r"class 6 \('class6'\) has no training images.*smaller imbalance_ratio"):
        load_dataset('cifar10-lt', tmp_path, imbalance_ratio=100)   # int(20 * 0.01**(6/9)) = 0


# ---- bad inputs: one specific error each ----

def test_unknown_dataset():
    with pytest.raises(ValueError, match='valid: ' + ', '.join(DATASETS)):
        load_dataset('imagenet')


def test_missing_data_root(tmp_path):
    with pytest.raises(ValueError, match='needs data_root.*data/README.md'):
        load_dataset('places-lt')
    with pytest.raises(FileNotFoundError, match='does not exist.*data/README.md'):
        load_dataset('places-lt', tmp_path/'nope')


@pytest.mark.parametrize('dataset,name', [('imagenet-lt', 'ImageNet_LT_train.txt'), ('places-lt', 'Places_LT_train.txt'),
                                          ('inat2018', 'train2018.json')])
def test_missing_list_file(tmp_path, dataset, name):
    with pytest.raises(FileNotFoundError, match=f'{name}.*data/README.md'):
        load_dataset(dataset, tmp_path)


def test_missing_test_list(tmp_path):
    make_split_list_tree(tmp_path, 'imagenet-lt', num_classes=7)
    (tmp_path/'ImageNet_LT_test.txt').unlink()
    with pytest.raises(FileNotFoundError, match='ImageNet_LT_test.txt'):
        load_dataset('imagenet-lt', tmp_path)


def test_malformed_line(tmp_path):
    make_split_list_tree(tmp_path, 'imagenet-lt', num_classes=7)
    f = tmp_path/'ImageNet_LT_train.txt'
    lines = f.read_text().splitlines(); lines[4] = 'train/n00000000/x.JPEG zero'
    f.write_text('\n'.join(lines))
    with pytest.raises(ValueError, match=r'ImageNet_LT_train.txt:5: malformed'):
        load_dataset('imagenet-lt', tmp_path)


def test_missing_image(tmp_path):
    make_split_list_tree(tmp_path, 'places-lt', num_classes=7)
    first = (tmp_path/'Places_LT_train.txt').read_text().split()[0]
    (tmp_path/first).unlink(); (tmp_path/'data_256/b/category_1/00000003.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=f'2 of .* missing.*first: .*{first}'):
        load_dataset('places-lt', tmp_path)


def test_undecodable_image(tmp_path):
    make_split_list_tree(tmp_path, 'imagenet-lt', num_classes=7)
    bad = tmp_path/'train/n00000000/n00000000_0.JPEG'
    bad.write_bytes(b'not a jpeg')
    d = load_dataset('imagenet-lt', tmp_path)
    with pytest.raises(ValueError, match='cannot decode image .*n00000000_0.JPEG'):
        d.train[0]


def test_class_without_training_images(tmp_path):
    make_split_list_tree(tmp_path, 'imagenet-lt', num_classes=7)
    f = tmp_path/'ImageNet_LT_train.txt'
    f.write_text(''.join(l + '\n' for l in f.read_text().splitlines() if not l.endswith(' 5')))
    with pytest.raises(ValueError, match=r"class 5 .* no training images.*QF"):
        load_dataset('imagenet-lt', tmp_path)


def test_inat_category_without_training_images(tmp_path):
    make_inat_tree(tmp_path, num_classes=7, counts=[101, 20, 1, 0, 2, 1, 1])
    with pytest.raises(ValueError, match=r"class 3 \('species_3'\) has no training images"):
        load_dataset('inat2018', tmp_path)


def test_inat_bad_json(tmp_path):
    make_inat_tree(tmp_path, num_classes=7)
    (tmp_path/'val2018.json').write_text(json.dumps({'images': []}))
    with pytest.raises(ValueError, match="val2018.json: missing key 'annotations'"):
        load_dataset('inat2018', tmp_path)


# ---- speed: iNat-sized lists parse in well under a few seconds ----

def test_parse_speed_437k(tmp_path):
    n = 437_513
    f = tmp_path/'iNaturalist18_train.txt'
    f.write_text(''.join(f'train_val2018/Plantae/{i % 8142}/{i:032x}.jpg {i % 8142}\n' for i in range(n)))
    t = time.perf_counter(); paths, labels = read_split_list(f); dt = time.perf_counter() - t
    assert len(paths) == n and labels.max() == 8141
    assert dt < 3, f'parsing took {dt:.1f}s'
    imgs = [dict(id=i, file_name=p) for i, p in enumerate(paths)]
    ann = [dict(id=i, image_id=i, category_id=int(l)) for i, l in enumerate(labels)]
    (tmp_path/'train2018.json').write_text(json.dumps(dict(images=imgs, annotations=ann, categories=[])))
    t = time.perf_counter(); p2, c2, _ = read_inat_json(tmp_path/'train2018.json'); dt = time.perf_counter() - t
    assert p2 == paths and dt < 4, f'JSON parsing took {dt:.1f}s'


# ---- synthetic-lt ----

def test_synthetic_deterministic_by_seed():
    a, b, c = (load_dataset('synthetic-lt', seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.train.data, b.train.data) and np.array_equal(a.train.targets, b.train.targets)
    assert not np.array_equal(a.train.data, c.train.data)
    assert np.array_equal(a.test.data, c.test.data)   # the test set is the same for every seed
    assert a.class_counts == c.class_counts and a.class_names == c.class_names and a.meta['rgb'] == c.meta['rgb']
    d = load_dataset('synthetic-lt', seed=0, sep=0.2)  # the generator's options change the images, and are recorded
    assert not np.array_equal(a.test.data, d.test.data) and d.meta['generator'] == {'sep': 0.2}


def _families(d):
    fam = {}
    for c, f in enumerate(d.meta['family']):
        if d.meta['difficulty'][c] == 'hard': fam.setdefault(f, []).append(d.class_counts[c])
    return fam


def test_synthetic_crosses_quantity_with_difficulty():
    d = load_dataset('synthetic-lt')
    assert d.name == 'synthetic-lt' and d.transform == 'synthetic' and d.num_classes == 20
    assert np.bincount(d.train.targets).tolist() == d.class_counts
    assert len(set(np.bincount(d.test.targets).tolist())) == 1          # balanced test set
    json.dumps(d.meta)
    for k in ('count', 'difficulty', 'family', 'shape', 'colour', 'member', 'rgb'): assert len(d.meta[k]) == d.num_classes
    assert d.meta['count'] == d.class_counts
    g = shot_groups(d.class_counts)
    for k in ('many', 'medium', 'few'):                                 # every shot group mixes easy and hard classes
        assert {d.meta['difficulty'][i] for i in g[k].tolist()} == {'easy', 'hard'}
    fam = _families(d)
    assert len(fam) >= 2 and all(len(v) >= 2 for v in fam.values())
    # a head-yet-hard family: head classes of similar size, so that the class prior cannot tell them apart
    assert any(min(v) > 100 and max(v) / min(v) < 1.5 for v in fam.values())
    assert 250 in next(v for v in fam.values() if min(v) > 100)         # the largest class is one of them
    # and families where it can: a head or medium class with few-shot siblings
    assert sum(max(v) > 50 and min(v) < 20 for v in fam.values()) >= 2
    # tail-yet-easy classes, each with a colour no other class comes near
    rgb = np.array(d.meta['rgb']); dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 9 * np.eye(len(rgb))
    few_easy = [i for i in g['few'].tolist() if d.meta['difficulty'][i] == 'easy']
    assert len(few_easy) >= 2 and all(dist[i].min() > 0.45 for i in few_easy)
    # within a family, neighbouring members are `sep` apart in colour, the head pair closest
    members = {f: [c for c in range(d.num_classes) if d.meta['family'][c] == f] for f in fam}
    step = {f: dist[m[0], m[1]] for f, m in members.items()}
    assert min(step, key=step.get) == next(f for f, v in fam.items() if min(v) > 100)


def test_synthetic_layout_options():
    d = load_dataset('synthetic-lt', families=((0, 1, 2), (9, 3), (10, 19), (11, 12)), sep=0.1, test_per_class=3)
    fam, member = d.meta['family'], d.meta['member']
    assert fam[0] == fam[1] == fam[2] and fam[3] == fam[9] and fam[10] == fam[19] and len(set(fam)) == 4 + 11
    assert [member[r] for r in (0, 1, 2, 3, 9, 10, 19)] == [0, 1, 2, 0, 1, 0, 1]   # member a is the largest
    assert len(d.test) == 60 and d.meta['generator']['sep'] == 0.1
    with pytest.raises(ValueError, match='disjoint'):
        load_dataset('synthetic-lt', families=((0, 1), (1, 2)))
    with pytest.raises(ValueError, match='one per family'):
        load_dataset('synthetic-lt', sep=(0.1, 0.2))


def test_synthetic_is_fast():
    t = time.perf_counter(); load_dataset('synthetic-lt', seed=3); assert time.perf_counter() - t < 5


def test_transform_override():
    d = load_dataset('synthetic-lt', transform='cifar')
    assert d.transform == 'cifar' and d.train[0][0].shape == (3, 32, 32)
    import torchvision.transforms as T
    tf = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])   # your own per-image transforms
    d = load_dataset('synthetic-lt', transform=(tf, tf))
    assert d.transform == 'custom' and d.train[0][0].dtype == torch.float32
    x = torch.stack([d.train[i][0] for i in range(4)])
    assert torch.equal(d.pipeline.train_batch(x), x)      # their float output is used as it is
    assert make_transforms('synthetic', 16).size == 16
    with pytest.raises(ValueError, match='unknown transform'):
        load_dataset('synthetic-lt', transform='bogus')


def test_fixture_counts_span_groups():
    for C in (1000, 365, 8142):
        assert all(groups_nonempty(fixture_counts(C)).values())


def test_shared_file_fixtures_keep_list_counts(tmp_path):
    counts = make_inat_tree(tmp_path/'inat', num_classes=20, share_files=True)
    d = load_dataset('inat2018', tmp_path/'inat', transform='cifar')
    assert d.class_counts == counts and len(list((tmp_path/'inat').rglob('*.jpg'))) == 20
    counts = make_split_list_tree(tmp_path/'pl', 'places-lt', num_classes=9, share_files=True)
    assert load_dataset('places-lt', tmp_path/'pl').class_counts == counts


# ---- CIFAR as an image-folder copy (the layout of ../shared/datasets/cifar10-jpeg.tar) ----
from ala_paper.fixtures import make_cifar_folders
from ala_paper.data import ArrayDataset, ArrayBatches

SHARED_TAR = Path(__file__).resolve().parents[2]/'shared'/'datasets'/'cifar10-jpeg.tar'


def test_cifar_folders_match_pickle_protocol(tmp_path):
    make_cifar_folders(tmp_path, 'cifar10-lt', per_class=50, test_per_class=2)
    d = load_dataset('cifar10-lt', tmp_path, imbalance_ratio=10, seed=3)
    assert d.class_counts == cifar_lt_counts(50, 10, 10) and d.meta['layout'] == 'folders'
    assert isinstance(d.train, ArrayDataset) and d.train.data.shape[1:] == (32, 32, 3) and len(d.test) == 20
    assert d.class_names == [f'class{c:03d}' for c in range(10)]
    assert d.meta['train_sha256'] != load_dataset('cifar10-lt', tmp_path, imbalance_ratio=10, seed=4).meta['train_sha256']
    x, y = next(iter(ArrayBatches(d.train, 8)))
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 32, 32)


def test_cifar100_folders(tmp_path):
    make_cifar_folders(tmp_path, 'cifar100-lt', per_class=10, test_per_class=1)
    d = load_dataset('cifar100-lt', tmp_path, imbalance_ratio=10)
    assert d.num_classes == 100 and d.class_counts == cifar_lt_counts(10, 100, 10)


@pytest.mark.parametrize('damage,message', [
    (lambda r: __import__('shutil').rmtree(r/'train'/'class003'), r"train has 9 class folders, cifar10-lt needs 10"),
    (lambda r: (r/'test'/'class010').mkdir(), r"test has 11 class folders"),
    (lambda r: (r/'test'/'class003').rename(r/'test'/'other'), r"train/ and test/ name different classes \(class003, other\)"),
    (lambda r: (r/'train'/'class002'/'0001.jpeg').write_bytes(b'broken'), r"cannot decode image .*class002/0001.jpeg"),
    (lambda r: __import__('PIL.Image').Image.new('RGB', (64, 64)).save(r/'test'/'class001'/'0000.jpeg', 'JPEG'),
     r"class001/0000.jpeg is 64x64 pixels, expected 32x32"),
    (lambda r: [p.unlink() for p in (r/'test'/'class007').iterdir()], r"test/class007 holds no images"),
    (lambda r: __import__('shutil').rmtree(r/'test'), r"holds neither cifar-10-batches-py/ .* nor train/ and test/"),
])
def test_cifar_folder_errors(tmp_path, damage, message):
    make_cifar_folders(tmp_path, 'cifar10-lt', per_class=4, test_per_class=1)
    damage(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_dataset('cifar10-lt', tmp_path, imbalance_ratio=2)


@pytest.mark.skipif(not SHARED_TAR.is_file(), reason=f'{SHARED_TAR} absent (only on the project machines)')
def test_shared_cifar10_jpeg_copy(tmp_path):
    "A few hundred real images from the shared tar, in its own layout, through the loader and one training step."
    import tarfile
    from ala_paper.train import train
    keep = {}
    with tarfile.open(SHARED_TAR) as tar:
        for m in tar:
            if not m.isfile(): continue
            split, cls = m.name.split('/')[-3:-1]
            if keep.setdefault((split, cls), 0) < (30 if split == 'train' else 5):
                keep[(split, cls)] += 1
                tar.extract(m, tmp_path, filter='data')
    root = next(p.parent for p in tmp_path.rglob('train'))
    d = load_dataset('cifar10-lt', root, imbalance_ratio=10)
    assert d.class_names == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    assert d.class_counts == cifar_lt_counts(30, 10, 10) and len(d.test) == 50
    r = train(dataset='cifar10-lt', data_root=root, loss='ala', arch='resnet8', imbalance_ratio=10, epochs=1, batch_size=32,
              out_dir=tmp_path/'run', verbose=False, progress=False)
    assert r['meta']['layout'] == 'folders' and len(r['per_class_acc']) == 10
