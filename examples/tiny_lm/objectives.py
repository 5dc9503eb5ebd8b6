"""A custom objective for the suite's ``--loss_name package.module:function``.

``token_cross_entropy(model, batch)`` computes the next-token cross-entropy from the logits
itself (it never reads the model's own ``.loss``), so it is an independent path to the same mean
as ``--loss_name causal_lm``.

It returns per-batch SUMS, not means: the suite adds them up over all batches and divides by the
total 'count', so the surface is the mean over every predicted token of the data set, whatever
the batch size and however many positions each batch ignores.
"""
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(model, batch):
    """Sums over the predicted positions of one batch of ``{'input_ids', 'labels'}``.

    Position t of a window predicts label t + 1 (the shift of Hugging Face's ``...ForCausalLM``
    models); labels equal to -100 are not predicted. Returns a dict of 0-dim tensors:

    * 'loss': the SUM of the per-token cross-entropies (nats) over the predicted positions;
    * 'count': how many positions that sum covers;
    * 'correct': how many of them the top-1 logit predicts right (the suite's train_acc, in %).
    """
    logits = model(input_ids=batch['input_ids']).logits
    logits = logits[:, :-1, :].float()
    targets = batch['labels'][:, 1:].to(logits.device)
    predicted = targets != IGNORE_INDEX
    logits, targets = logits[predicted], targets[predicted]   # (count, vocab), (count,)
    loss = F.cross_entropy(logits, targets, reduction='sum')
    correct = (logits.argmax(dim=-1) == targets).sum()
    return {'loss': loss, 'count': predicted.sum(), 'correct': correct}
