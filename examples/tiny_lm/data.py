"""Character-level text that ships with scikit-learn, cut into fixed-length training windows.

The text is the reStructuredText description of each of scikit-learn's bundled data sets
(``sklearn/datasets/descr/*.rst``): real English prose, installed with a package that is already
a dependency of the suite, so nothing is downloaded. The files are read in sorted name order and joined
into one string; its first 90 % of characters is the training text, the last 10 % the test text.

The tokenizer has a FIXED vocabulary (newline, printable ASCII, one id for anything else), so the
vocabulary size and every id are the same whatever text a scikit-learn release ships.

Factories for the suite's ``--dataset package.module:factory``:

* ``char_text(root, train=True)``: every label is the input id (the model shifts by one itself,
  as Hugging Face's ``...ForCausalLM`` models do);
* ``char_text_masked(root, train=True)``: the same windows, with the first ``PROMPT_LENGTH``
  labels of each window set to -100 (ignored), as a prompt would be.

``root`` (the suite's ``--datapath``) is accepted and ignored: the text ships with scikit-learn.
"""
import os

import torch

WINDOW = 64              # tokens per window (the model's context length, see model.py)
MAX_TRAIN_WINDOWS = 256  # at most this many windows of training text ...
MAX_TEST_WINDOWS = 64    # ... and of test text (small enough for tests on 2 CPU cores)
TEST_FRACTION = 0.1      # the last 10 % of the characters is the test text
PROMPT_LENGTH = 8        # char_text_masked: labels of the first 8 positions are -100
IGNORE_INDEX = -100      # the label PyTorch's cross_entropy and Hugging Face models skip

# Id 0 is newline, ids 1..95 are the printable ASCII characters ' '..'~', and UNKNOWN_ID (96)
# stands for every other character (tabs, non-ASCII letters, ...).
VOCAB = '\n' + ''.join(chr(code) for code in range(32, 127))
UNKNOWN_ID = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1
_ID_OF = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text):
    """Characters -> LongTensor of ids (unknown characters -> UNKNOWN_ID)."""
    return torch.tensor([_ID_OF.get(ch, UNKNOWN_ID) for ch in text], dtype=torch.long)


def decode(ids):
    """Ids -> text; UNKNOWN_ID is shown as '?'."""
    return ''.join(VOCAB[i] if 0 <= i < len(VOCAB) else '?' for i in (int(i) for i in ids))


def descr_folder():
    """The folder of scikit-learn's bundled dataset descriptions."""
    import sklearn.datasets
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), 'descr')


def corpus_text():
    """All the ``descr/*.rst`` files, in sorted name order, joined by a blank line."""
    folder = descr_folder()
    names = sorted(n for n in os.listdir(folder) if n.endswith('.rst'))
    if not names:
        raise RuntimeError(f'no dataset descriptions (*.rst) found in {folder}')
    parts = []
    for name in names:
        with open(os.path.join(folder, name), encoding='utf-8') as f:
            parts.append(f.read())
    return '\n\n'.join(parts)


def split_text(train=True):
    """The training text (first 90 %) or the test text (last 10 %) of corpus_text()."""
    text = corpus_text()
    cut = int(len(text) * (1 - TEST_FRACTION))
    return text[:cut] if train else text[cut:]


class CharWindows(torch.utils.data.Dataset):
    """Non-overlapping windows of ``WINDOW`` ids from the start of the text, as dicts
    ``{'input_ids': LongTensor(WINDOW), 'labels': LongTensor(WINDOW)}`` (the model's keyword
    arguments). Labels equal the input ids, except the first ``prompt_length`` positions of each
    window, which are IGNORE_INDEX."""

    def __init__(self, text, max_windows, prompt_length=0):
        ids = encode(text)
        count = min(len(ids) // WINDOW, max_windows)
        if count == 0:
            raise RuntimeError(f'the text has {len(ids)} characters, fewer than one window of {WINDOW}')
        self.input_ids = ids[:count * WINDOW].view(count, WINDOW).clone()
        self.labels = self.input_ids.clone()
        self.labels[:, :prompt_length] = IGNORE_INDEX

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, index):
        return {'input_ids': self.input_ids[index], 'labels': self.labels[index]}


def _windows(train, prompt_length):
    return CharWindows(split_text(train), MAX_TRAIN_WINDOWS if train else MAX_TEST_WINDOWS, prompt_length)


def char_text(root=None, train=True):
    """``--dataset examples.tiny_lm.data:char_text``: every position is predicted.
    ``root`` is ignored (the text ships with scikit-learn)."""
    return _windows(train, 0)


def char_text_masked(root=None, train=True):
    """``--dataset examples.tiny_lm.data:char_text_masked``: like char_text, but the labels of
    the first PROMPT_LENGTH positions of each window are -100, so they are not predicted.
    ``root`` is ignored (the text ships with scikit-learn)."""
    return _windows(train, PROMPT_LENGTH)
