"""cifar10/main.py on the bundled digits: checkpoint folder, checkpoint format, schedule, labels, resume."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from losslandscape import train as train_main
from losslandscape.data import datasets
from losslandscape.errors import UsageError
from losslandscape.models import loading
from tests.conftest import call_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FOLDER = 'cnn_bn_sgd_lr=0.1_bs=128_wd=0.0005_mom=0.9_save_epoch=1'


def train(save, *extra, model='cnn_bn', epochs=4):
    argv = ['--dataset', 'digits', '--model', model, '--epochs', str(epochs), '--save', str(save),
            '--threads', '1', *extra]
    return train_main.main(argv)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def run_folder(tmp_path_factory):
    return train(tmp_path_factory.mktemp('nets'))


def test_folder_name_and_content(run_folder):
    assert os.path.basename(run_folder) == DEFAULT_FOLDER
    expected = {f'model_{e}.t7' for e in range(5)} | {f'opt_state_{e}.t7' for e in range(5)} | {'log.out'}
    assert set(os.listdir(run_folder)) == expected
    with open(os.path.join(run_folder, 'log.out')) as log:
        lines = log.read().splitlines()
    assert [line.split()[1] for line in lines] == ['0', '1', '2', '3', '4']
    assert all('train_err:' in line and 'test_loss' in line for line in lines)


def test_save_epoch_keeps_every_nth_and_the_last(tmp_path):
    folder = train(tmp_path, '--save_epoch', '2', model='mlp', epochs=5)
    assert os.path.basename(folder).endswith('_save_epoch=2')
    saved = sorted(int(f[len('model_'):-len('.t7')]) for f in os.listdir(folder) if f.startswith('model_'))
    assert saved == [0, 2, 4, 5]
    assert sorted(f for f in os.listdir(folder) if f.startswith('opt_state_')) == \
        [f'opt_state_{e}.t7' for e in (0, 2, 4, 5)]


def test_folder_name_options_follow_the_original():
    args = train_main.get_args_parser().parse_args(
        ['--model', 'resnet56', '--lr_decay', '0.2', '--loss_name', 'mse', '--noaug', '--raw_data',
         '--label_corrupt_prob', '0.5', '--ngpu', '2', '--idx', '3', '--save_epoch', '10'])
    assert train_main.name_save_folder(args) == (
        'resnet56_sgd_lr=0.1_lr_decay=0.2_bs=128_wd=0.0005_mom=0.9_save_epoch=10'
        '_loss=mse_noaug_rawdata_randlabel=0.5_ngpu=2_idx=3')


def test_checkpoints_load_weights_only(run_folder):
    net = loading.build('digits', 'cnn_bn')
    for epoch in range(5):
        checkpoint = load(os.path.join(run_folder, f'model_{epoch}.t7'))
        assert set(checkpoint) == {'state_dict', 'epoch', 'acc'}
        assert checkpoint['epoch'] == epoch
        assert 0.0 <= checkpoint['acc'] <= 100.0
        net.load_state_dict(checkpoint['state_dict'], strict=True)
        opt_state = load(os.path.join(run_folder, f'opt_state_{epoch}.t7'))
        assert 'param_groups' in opt_state['optimizer'] and opt_state['epoch'] == epoch
    # The shared reader of the surface step takes them as they are.
    assert set(loading.read_state_dict(os.path.join(run_folder, 'model_4.t7'))) == set(net.state_dict())
    assert load(os.path.join(run_folder, 'model_4.t7'))['acc'] > 50.0  # it did learn


def test_model_0_is_the_untrained_model(run_folder):
    before = load(os.path.join(run_folder, 'model_0.t7'))['state_dict']
    after = load(os.path.join(run_folder, 'model_1.t7'))['state_dict']
    assert before.keys() == after.keys()
    assert not torch.equal(before['classifier.weight'], after['classifier.weight'])
    assert before['features.0.1.num_batches_tracked'] == 0 < after['features.0.1.num_batches_tracked']


def test_lr_schedule_milestones(run_folder):
    assert train_main.decay_epochs(300) == [150, 225, 275]
    assert train_main.decay_epochs(4) == [2, 3, 4]
    assert train_main.decay_epochs(10) == [5, 8, 9]
    assert train_main.decay_epochs(3) == [2, 3] and train_main.decay_epochs(1) == [1]
    lr = lambda e, n: train_main.learning_rate(e, 0.1, 0.1, n)
    assert [lr(e, 3) for e in (1, 2, 3)] == pytest.approx([0.1, 0.1, 0.01])   # one decay per step
    assert [lr(e, 300) for e in (150, 151, 225, 226, 275, 276)] == \
        pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001, 0.0001])
    # The rate each epoch actually trained with, as its saved optimizer state records it.
    used = [load(os.path.join(run_folder, f'opt_state_{e}.t7'))['optimizer']['param_groups'][0]['lr']
            for e in range(1, 5)]
    assert used == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_corrupt_labels_fraction_and_seed():
    labels = torch.from_numpy(np.random.default_rng(5).integers(0, 10, 20000))
    noisy, replaced = train_main.corrupt_labels(labels, 0.3, 10, seed=0)
    assert replaced.mean() == pytest.approx(0.3, abs=0.015)
    # A random class is the true one 1 time in 10: 27 % of the labels change.
    assert (noisy != labels).float().mean().item() == pytest.approx(0.27, abs=0.015)
    assert torch.equal(noisy[~torch.from_numpy(replaced)], labels[~torch.from_numpy(replaced)])
    assert torch.equal(noisy, train_main.corrupt_labels(labels, 0.3, 10, seed=0)[0])
    assert not torch.equal(noisy, train_main.corrupt_labels(labels, 0.3, 10, seed=1)[0])


def test_label_corruption_saves_the_labels_trained_on(tmp_path):
    folder = train(tmp_path, '--label_corrupt_prob', '0.5', model='mlp', epochs=1)
    assert os.path.basename(folder).endswith('_randlabel=0.5')
    labels = load(os.path.join(folder, train_main.TRAIN_LABELS_FILE))
    clean = datasets.load_dataset('digits', '', train=True).targets
    assert labels.dtype == torch.int64 and labels.shape == clean.shape
    assert (labels != clean).float().mean().item() == pytest.approx(0.5 * 0.9, abs=0.06)
    assert torch.equal(datasets.read_labels(os.path.join(folder, train_main.TRAIN_LABELS_FILE),
                                                    len(clean)), labels)


def test_resume_continues_epochs_and_matches_uninterrupted_run(tmp_path):
    whole = train(tmp_path / 'whole', model='mlp', epochs=3)
    resumed = train(tmp_path / 'resumed', '--resume_model', os.path.join(whole, 'model_1.t7'),
                    '--resume_opt', os.path.join(whole, 'opt_state_1.t7'), model='mlp', epochs=3)
    assert sorted(f for f in os.listdir(resumed) if f.startswith('model_')) == ['model_2.t7', 'model_3.t7']
    assert [load(os.path.join(resumed, f'model_{e}.t7'))['epoch'] for e in (2, 3)] == [2, 3]
    with open(os.path.join(resumed, 'log.out')) as log:
        assert [line.split()[1] for line in log.read().splitlines()] == ['2', '3']
    # Same batches, augmentation, schedule and momentum: the same weights as never stopping.
    a = load(os.path.join(whole, 'model_3.t7'))['state_dict']
    b = load(os.path.join(resumed, 'model_3.t7'))['state_dict']
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_past_the_last_epoch_is_refused(run_folder, tmp_path):
    with pytest.raises(UsageError, match='nothing to train'):
        train(tmp_path, '--resume_model', os.path.join(run_folder, 'model_4.t7'), epochs=4)


@pytest.mark.parametrize('extra, message', [
    (['--lr', '0'], '--lr must be a positive'),
    (['--resume_model', 'no/such/model.t7'], "--resume_model 'no/such/model.t7' does not exist"),
    (['--resume_opt', 'x.t7'], '--resume_opt needs --resume_model'),
    (['--label_corrupt_prob', '1.5'], 'label_corrupt_prob'),
    (['--ngpu', '2'], '--ngpu > 1 needs --cuda'),
])
def test_bad_input_is_a_usage_error(tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        train(tmp_path, *extra)
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_unknown_model_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'cifar10.main', '--dataset', 'digits', '--model', 'nosuch',
                             '--save', str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'error: unknown --model' in lines[0] and 'Traceback' not in result.stderr


def test_augment_is_a_padded_crop_or_its_mirror():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = train_main.augment(images, generator)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips = 0
    for i in range(len(images)):
        crops = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        plain = any(torch.equal(out[i], crop) for crop in crops)
        mirrored = any(torch.equal(out[i], crop.flip(2)) for crop in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < len(images)


def test_digits_are_not_augmented():
    args = train_main.get_args_parser().parse_args([])
    assert not train_main.should_augment(args, datasets.load_dataset('digits', '', train=True))


# ----------------------------------------------------------------------------- refusals leave no trace

def folder_tree(root):
    """Every folder and file under ``root`` with the files' bytes: equal trees, nothing touched."""
    tree = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders:
            tree[os.path.relpath(os.path.join(folder, name), root)] = 'folder'
        for name in files:
            with open(os.path.join(folder, name), 'rb') as fh:
                tree[os.path.relpath(os.path.join(folder, name), root)] = fh.read()
    return tree


def assert_refused(argv, message, root, capsys):
    """main(argv) exits 2 with one line on stderr naming ``message``, and ``root`` is unchanged."""
    before = folder_tree(root)
    code, err = call_main(train_main.main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0] and 'Traceback' not in err, err
    assert folder_tree(root) == before


@pytest.mark.parametrize('resume, message', [
    (['--resume_model', '{cnn_bn}'], 'does not fit the model'),                        # another model
    (['--resume_model', '{mlp}'], 'leaves nothing to train'),                          # epoch 1 of --epochs 1
    (['--resume_model', '{mlp}', '--epochs', '2', '--resume_opt', '{run}/opt_state_1.t7'],
     'does not fit a sgd optimizer'),                                                  # cnn_bn's momentum
    (['--resume_model', '{mlp}', '--epochs', '2', '--resume_opt', '{mlp}'], "without 'optimizer'"),
])
@pytest.mark.parametrize('save', ['given', 'default'])
def test_a_refused_resume_makes_no_run_folder(checkpoints, run_folder, tmp_path, monkeypatch, capsys,
                                              resume, message, save):
    monkeypatch.chdir(tmp_path)   # without --save the run folder would go to ./trained_nets
    paths = {'cnn_bn': checkpoints['cnn_bn'], 'mlp': checkpoints['mlp'], 'run': run_folder}
    argv = ['--dataset', 'digits', '--model', 'mlp', '--epochs', '1', '--threads', '1',
            *[arg.format(**paths) for arg in resume]]
    if save == 'given':
        argv += ['--save', str(tmp_path / 'fresh')]
    assert_refused(argv, message, tmp_path, capsys)


def save_target(kind, tmp_path):
    """A --save that cannot hold the run folder, or None where this machine cannot make one."""
    (tmp_path / 'file.t7').write_bytes(b'not a folder')
    if kind == 'file':
        return str(tmp_path / 'file.t7')
    if kind == 'under a file':
        return str(tmp_path / 'file.t7' / 'nets')
    if kind == 'run folder is a file':
        (tmp_path / 'nets').mkdir()
        (tmp_path / 'nets' / 'mlp_sgd_lr=0.1_bs=128_wd=0.0005_mom=0.9_save_epoch=1').write_bytes(b'')
        return str(tmp_path / 'nets')
    if kind == 'read-only folder':
        (tmp_path / 'locked').mkdir(mode=0o500)
        return None if os.access(tmp_path / 'locked', os.W_OK) else str(tmp_path / 'locked' / 'nets')
    if kind == '/proc':   # writable to the permission bits of root, yet no folder can be made there
        return '/proc/no_such_folder' if os.path.isdir('/proc/self') else None


@pytest.mark.parametrize('kind', ['file', 'under a file', 'run folder is a file', 'read-only folder', '/proc'])
def test_an_unusable_save_folder_is_a_usage_error(tmp_path, capsys, kind):
    save = save_target(kind, tmp_path)
    if save is None:
        pytest.skip(f'no {kind} --save on this machine (root writes anywhere)')
    assert_refused(['--dataset', 'digits', '--model', 'mlp', '--epochs', '1', '--threads', '1', '--save', save],
                   '--save', tmp_path, capsys)
    assert not capsys.readouterr().out   # refused before training (or loading) started


def test_a_half_made_run_folder_is_removed(tmp_path, monkeypatch):
    """makedirs failing part way (a full disk, say) leaves none of the folders it made."""
    real_makedirs = os.makedirs

    def makedirs_until_the_disk_is_full(path, exist_ok=False):
        real_makedirs(os.path.dirname(path), exist_ok=exist_ok)
        raise OSError(28, 'No space left on device', path)

    monkeypatch.setattr(os, 'makedirs', makedirs_until_the_disk_is_full)
    with pytest.raises(UsageError, match="--save .*: cannot make the run folder .*No space left on device"):
        train_main.make_run_folder(str(tmp_path / 'a' / 'b'), str(tmp_path / 'a' / 'b' / 'run'))
    assert not os.listdir(tmp_path)


def test_an_unusable_save_folder_exits_2_before_training(tmp_path):
    (tmp_path / 'file.t7').write_bytes(b'not a folder')
    result = subprocess.run([sys.executable, '-m', 'cifar10.main', '--dataset', 'digits', '--model', 'mlp',
                             '--epochs', '1', '--save', str(tmp_path / 'file.t7')],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"--save '{tmp_path / 'file.t7'}'" in line and 'not a folder' in line
    assert not result.stdout


# ----------------------------------------------------------------------------- help

def test_options_without_a_default_value_say_what_happens_without_them():
    # The formatter states no default for None or '' (there is no value to print): the help must
    # say in words what a run does without the option.
    for action in train_main.get_args_parser()._actions:
        if action.option_strings and action.default in (None, ''):
            assert 'default' in (action.help or ''), action.dest
