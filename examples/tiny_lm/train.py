"""Train the tiny GPT-2 of model.py on the character windows of data.py, with nothing downloaded.

    python -m examples.tiny_lm.train --save DIR [--steps N] [--seed S] [--threads T]

writes DIR/model.t7 = {'state_dict': ..., 'step': N}, the checkpoint format the suite's
``--model_file`` reads. AdamW on mini-batches of 64-character windows at random offsets of the
training text; the seed fixes the initial weights and the batch order, so a run is repeatable.
The mean next-token cross-entropy over the windows of ``data.char_text`` (the data set the
surface is computed on) is printed before and after training, and the test text's after.
"""
import argparse
import os
import time

import torch

from examples.tiny_lm.data import WINDOW, char_text, encode, split_text
from examples.tiny_lm.model import tiny_gpt
from examples.tiny_lm.objectives import token_cross_entropy

DEFAULT_STEPS = 2000


def dataset_loss(model, data, batch_size=64):
    """Mean next-token cross-entropy over every predicted token of ``data`` (no gradients)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            batch = {'input_ids': data.input_ids[start:stop], 'labels': data.labels[start:stop]}
            sums = token_cross_entropy(model, batch)
            total += float(sums['loss'])
            count += int(sums['count'])
    return total / count


def train(steps, seed=0, batch_size=32, lr=3e-3, weight_decay=0.01, log_every=0):
    """The model after ``steps`` AdamW steps from the seed's initial weights, and the mean
    training loss (nats per token) before and after: (model, start_loss, end_loss)."""
    torch.manual_seed(seed)
    model = tiny_gpt()
    data = char_text(root=None, train=True)
    start_loss = dataset_loss(model, data)
    # Mini-batches are windows at random offsets of the whole training text (more text than the
    # data set's first MAX_TRAIN_WINDOWS windows, so the model memorizes less).
    text = encode(split_text(train=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    model.train()   # dropout is 0, so train mode computes what eval mode does
    for step in range(1, steps + 1):
        starts = torch.randint(len(text) - WINDOW + 1, (batch_size, 1), generator=order)
        windows = text[starts + torch.arange(WINDOW)]
        output = model(input_ids=windows, labels=windows)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        if log_every and step % log_every == 0:
            print(f'step {step}: batch loss {output.loss.item():.4f}', flush=True)
    model.eval()
    return model, start_loss, dataset_loss(model, data)


def held_out_loss(model):
    """Mean next-token cross-entropy over the test windows (text the model never trained on)."""
    return dataset_loss(model, char_text(root=None, train=False))


def build_parser():
    parser = argparse.ArgumentParser(
        description='Train the tiny character-level GPT-2 of examples/tiny_lm on the text bundled with '
                    'scikit-learn and save DIR/model.t7 (nothing is downloaded).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--save', required=True, help='folder to write model.t7 into (created if missing)')
    parser.add_argument('--steps', type=int, default=DEFAULT_STEPS,
                        help='AdamW steps (batches of 32 windows of 64 characters)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initial weights and the batch order')
    parser.add_argument('--lr', type=float, default=3e-3, help='AdamW learning rate')
    parser.add_argument('--threads', type=int, default=0,
                        help="CPU threads for torch (0: torch's default)")
    parser.add_argument('--log_every', type=int, default=0,
                        help='print the batch loss every N steps (0: only the start and end loss)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.steps < 0:
        raise SystemExit('--steps must be >= 0')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    model, start_loss, end_loss = train(args.steps, seed=args.seed, lr=args.lr, log_every=args.log_every)
    print(f'train loss at start: {start_loss:.4f} nats/token')
    print(f'train loss after {args.steps} steps: {end_loss:.4f} nats/token '
          f'({time.perf_counter() - began:.1f} s); test loss {held_out_loss(model):.4f}')
    os.makedirs(args.save, exist_ok=True)
    path = os.path.join(args.save, 'model.t7')
    torch.save({'state_dict': model.state_dict(), 'step': args.steps}, path)
    print(f'saved {path}')


if __name__ == '__main__':
    main()
