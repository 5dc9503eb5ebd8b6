"""Write a small fake CIFAR-10 folder in the standard cifar-10-batches-py layout.

For tests and benchmarks on machines without the real data set: the files are pickled dicts with
'data' (N x 3072 uint8, channel-major rows) and 'labels', as the official batches read with
encoding='latin1', so every reader of the real folder (ours, torchvision's) reads these too; their
checksums differ, which is only a warning. Pickle protocol 2, the official files' own: it names no
global that the real batches do not.
"""
import os
import pickle

import numpy as np

TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCH = 'test_batch'


def write_fake_cifar10(root, num_train=500, num_test=100, seed=0):
    """Create root/cifar-10-batches-py with ``num_train`` images over the five training batches
    and ``num_test`` test images of random pixels and labels; return the batches folder."""
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(name, n):
        batch = {'data': rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 'labels': rng.integers(0, 10, size=n).tolist(),
                 'batch_label': name}
        with open(os.path.join(folder, name), 'wb') as fh:
            pickle.dump(batch, fh, protocol=2)

    for name, part in zip(TRAIN_BATCHES, np.array_split(np.arange(num_train), len(TRAIN_BATCHES))):
        dump(name, len(part))
    dump(TEST_BATCH, num_test)
    with open(os.path.join(folder, 'batches.meta'), 'wb') as fh:
        pickle.dump({'label_names': [f'class{i}' for i in range(10)]}, fh, protocol=2)
    return folder
