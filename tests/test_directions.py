"""Directions: each normalisation's defining property, biasbn, weights vs states, seeds, moving."""
import pytest
import torch

from losslandscape.directions import moving, normalization, subsets
from losslandscape.models.digits import MODELS


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = MODELS['cnn_bn']()
    with torch.no_grad():   # non-trivial BN statistics so 'states' has something to move
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def direction(net, norm, ignore=None, dir_type='weights', seed=0):
    base = subsets.get_base(net, dir_type)
    return base, normalization.make_random_direction(base, torch.Generator().manual_seed(seed), norm, ignore)


def filters(t):
    return t.reshape(t.shape[0], -1)


@pytest.mark.parametrize('norm', normalization.NORMS)
def test_normalization_property(net, norm):
    base, d = direction(net, norm, 'biasbn')
    raw = normalization.random_direction(base, torch.Generator().manual_seed(0))
    checked = 0
    for w, di, r in zip(base, d, raw):
        if w.dim() <= 1:
            continue
        checked += 1
        if norm == 'filter':
            torch.testing.assert_close(filters(di).norm(dim=1), filters(w).norm(dim=1))
        elif norm == 'layer':
            torch.testing.assert_close(di.norm(), w.norm())
        elif norm == 'weight':
            torch.testing.assert_close(di, r * w)
        elif norm == 'dfilter':
            torch.testing.assert_close(filters(di).norm(dim=1), torch.ones(w.shape[0]))
        elif norm == 'dlayer':
            torch.testing.assert_close(di.norm(), torch.tensor(1.0))
        # Normalisation rescales; it never changes a filter's direction (except 'weight').
        if norm != 'weight':
            cos = torch.nn.functional.cosine_similarity(filters(di), filters(r), dim=1)
            torch.testing.assert_close(cos, torch.ones_like(cos))
    assert checked == 3   # two convs and the classifier


def test_filter_norm_on_linear_layer_uses_incoming_weights_per_neuron():
    net = MODELS['mlp']()
    base, d = direction(net, 'filter', 'biasbn')
    fc1_w, fc1_d = base[0], d[0]   # (hidden, 64): row i = incoming weights of neuron i
    torch.testing.assert_close(fc1_d.norm(dim=1), fc1_w.norm(dim=1))


def test_biasbn_zeroes_and_default_copies_weights(net):
    base, ignored = direction(net, 'filter', 'biasbn')
    _, kept = direction(net, 'filter', None)
    for w, a, b in zip(base, ignored, kept):
        if w.dim() <= 1:
            assert torch.count_nonzero(a) == 0
            torch.testing.assert_close(b, w)


def test_states_direction_covers_buffers(net):
    states, d = direction(net, 'filter', None, dir_type='states')
    keys = list(net.state_dict())
    assert len(d) == len(keys) > len(list(net.parameters()))
    for key, w, di in zip(keys, states, d):
        if key.endswith('num_batches_tracked'):
            assert torch.count_nonzero(di) == 0        # a step counter never moves
        elif key.endswith('running_mean'):
            torch.testing.assert_close(di, w)          # dim <= 1 without biasbn: d = w


def test_idx_gives_different_directions(net):
    _, d0 = direction(net, 'filter', seed=0)
    _, d0_again = direction(net, 'filter', seed=0)
    _, d1 = direction(net, 'filter', seed=1)
    assert all(torch.equal(a, b) for a, b in zip(d0, d0_again))
    assert not torch.equal(d0[0], d1[0])


def test_set_weights_moves_parameters_only(net):
    base, dx = direction(net, 'filter', 'biasbn')
    _, dy = direction(net, 'filter', 'biasbn', seed=5)
    stats_before = [m.running_mean.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    moving.move(net, 'weights', base, dx, dy, 0.5, -0.25)
    for p, w, a, b in zip(net.parameters(), base, dx, dy):
        torch.testing.assert_close(p.detach(), w + 0.5 * a - 0.25 * b)
    after = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats_before, after))


def test_set_states_moves_statistics_too(net):
    states, dx = direction(net, 'filter', None, dir_type='states')
    moving.move(net, 'states', states, dx, None, 0.5)
    for (key, t), s, d in zip(net.state_dict().items(), states, dx):
        if t.is_floating_point():
            torch.testing.assert_close(t, s + 0.5 * d)
        else:
            assert torch.equal(t, s)
    running = [k for k in net.state_dict() if k.endswith('running_var')]
    assert running  # the statistics are in the moved state


def test_target_direction_is_difference():
    a, b = MODELS['mlp'](), MODELS['mlp']()
    d = normalization.target_direction(subsets.get_weights(a), subsets.get_weights(b))
    for pa, pb, di in zip(a.parameters(), b.parameters(), d):
        torch.testing.assert_close(pa.detach() + di, pb.detach())
