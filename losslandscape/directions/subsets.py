"""What a direction covers: the entries of a model's base point (its parameters, or its whole
state), the subsets --include_params / --exclude_params select, tied entries, and the copy of the
centre a run moves from (see directions.normalization for the conventions)."""
import fnmatch

import torch

from losslandscape.errors import UsageError

DIR_TYPES = ('weights', 'states')


# ----------------------------------------------------------------------------- base points

LOW_PRECISION = (torch.bfloat16, torch.float16)


def get_weights(net):
    """Copies of the parameters, in net.parameters() order, each in its own dtype (the centre is
    kept once; directions.moving computes a low-precision model's points in float32 from it)."""
    return [p.detach().clone() for p in net.parameters()]


def get_states(net):
    """Copies of every state_dict() entry, in order (buffers included)."""
    return [t.detach().clone() for t in net.state_dict().values()]


def entry_tensors(net, dir_type):
    """The model's own tensors a direction moves, in its order (not copies)."""
    return list(net.parameters()) if dir_type == 'weights' else list(net.state_dict().values())


def entry_names(net, dir_type):
    """The names of the tensors a direction has, in its order."""
    return [n for n, _ in net.named_parameters()] if dir_type == 'weights' else list(net.state_dict())


def split_patterns(patterns):
    return [p.strip() for p in (patterns or '').split(',') if p.strip()]


def selected_entries(names, include='', exclude='', dir_type='weights'):
    """[bool per name]: the entries --include_params/--exclude_params keep (all by default).
    UsageError for a pattern that matches no name, or a selection that keeps nothing."""
    keep = [True] * len(names)
    what = 'parameter' if dir_type == 'weights' else 'state_dict entry'
    for flag, patterns in (('--include_params', split_patterns(include)), ('--exclude_params', split_patterns(exclude))):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                example = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
                raise UsageError(f'{flag} pattern {pattern!r} matches no {what} name of the model ({example})')
        if patterns:
            hits = [any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names]
            keep = [k and h for k, h in zip(keep, hits)] if flag == '--include_params' else \
                [k and not h for k, h in zip(keep, hits)]
    if not any(keep):
        raise UsageError('--include_params/--exclude_params leave no tensor for the directions to move')
    return keep


def tied_entries(net):
    """Groups of state_dict() positions holding one tensor (tied weights: a language model's input
    and output embeddings, say), each group in state_dict order; named_parameters() lists such a
    tensor once, state_dict() under every name."""
    positions = {}
    for i, tensor in enumerate(net.state_dict(keep_vars=True).values()):
        positions.setdefault(id(tensor), []).append(i)
    return [group for group in positions.values() if len(group) > 1]


def refuse_split_ties(net, keep):
    """'states' directions of a model with tied weights: set_states writes a shared tensor once per
    name, so the last name's entry is the one that moves it, and the direction files give every
    name of it that entry's values (direction_files, seeded). A parameter subset that keeps some
    names of a tied tensor but not the others would leave it where the last name says: refused."""
    names = list(net.state_dict())
    for group in tied_entries(net):
        if len({keep[i] for i in group}) > 1:
            raise UsageError('--include_params/--exclude_params: ' + ', '.join(repr(names[i]) for i in group)
                             + ' are one tensor (tied weights) under --dir_type states: keep all of them or none')


def has_statistics(net):
    """True when the model has floating buffers (BatchNorm running statistics) that 'weights'
    directions leave where they are."""
    return any(b.is_floating_point() for b in net.buffers())


def get_base(net, dir_type):
    return get_weights(net) if dir_type == 'weights' else get_states(net)
