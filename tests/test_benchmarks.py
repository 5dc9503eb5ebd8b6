"""The benchmark scripts still run and report consistent figures (on tiny inputs; no timing is asserted:
speed is judged from `make bench` output, never by tests)."""
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import bench_hessian, bench_standard_errors, bench_surface
from losslandscape.io import hdf5_layout

MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')


@pytest.mark.parametrize('with_mpi', [False, pytest.param(True, marks=pytest.mark.skipif(
    not os.path.exists(MPIEXEC), reason='mpiexec (pip package mpich) is not installed'))], ids=['serial', 'mpi'])
def test_bench_surface_table(tmp_path, capsys, with_mpi):
    out = tmp_path / 'bench.json'
    argv = ['--model', 'resnet20', '--num_images', '24', '--grid', '2', '--repeats', '1', '--threads', '1',
            '--batch_size', '16', '--levers', '', ' --fold_bn', '--json', str(out)]
    if with_mpi:
        argv += ['--skip_naive', '--mpi_levers', ' --fold_bn']
    results = bench_surface.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results['resident_data_mb'] == pytest.approx(24 * 3 * 32 * 32 / 2**20)   # uint8 images
    default, folded = results['levers']['default'], results['levers']['--fold_bn']
    for row in (default, folded):
        assert row['efficiency'] == pytest.approx(row['floor_s_per_point'] / row['suite_s_per_point'])
        assert row['second_whole_run_s'] == pytest.approx(row['second_run_startup_s'] + 4 * row['suite_s_per_point'])
        if not with_mpi:
            assert row['speedup_over_naive'] == pytest.approx(results['naive_s_per_point'] / row['suite_s_per_point'])
            assert row['whole_run_speedup'] == pytest.approx(results['naive_whole_run_s'] / row['whole_run_s'])
            assert results['naive_whole_run_s'] > 4 * results['naive_s_per_point']   # its set-up counts too
    assert default['max_rel_loss_change'] == 0
    assert 0 < folded['max_rel_loss_change'] < 1e-4      # folding moves only the rounding
    # The configuration each row ran: --batch_size given, the rest plain (too short a run to time).
    assert default['configurations'] == ['batch 16'] and default['startup_s'] > 0
    assert folded['configurations'] == ['batch 16, BatchNorm folded']
    if not with_mpi:   # the naive loop, run in a process of its own, computes the same losses
        for row in (default, folded):
            assert 0 <= row['max_rel_change_vs_naive'] < 1e-5
    if with_mpi:
        row = results['levers']['mpiexec -n 2 --threads 1 --fold_bn']
        assert row['suite_s_per_point'] > 0 and row['configurations'] == ['batch 16, BatchNorm folded']
    table = capsys.readouterr().out
    assert 'suite --fold_bn' in table and ('naive (DataLoader' in table) != with_mpi
    assert results['machine']['threads'] == 1          # --threads reaches the suite's own runs


def test_bench_hessian_reports_products_per_second(tmp_path):
    result = bench_hessian.main(['--num_images', '8', '--batch_size', '8', '--repeats', '1', '--threads', '1',
                                 '--points', '1', '--eig_ncv', '4', '--json', str(tmp_path / 'h.json'), '--maps'])
    assert result['hvps_per_second'] == pytest.approx(1 / result['seconds_per_hvp'])
    assert result['points_per_minute_source'] == 'measured' and result['hvp_counts'][0] >= 4
    max_eig, min_eig = result['eigenvalues'][0]
    assert max_eig >= min_eig
    assert json.loads((tmp_path / 'h.json').read_text())['hvps_per_second'] == result['hvps_per_second']


def test_bench_hessian_compares_cold_and_warm_maps():
    """The map rows: products and seconds per point of each map, and the largest differences
    relative to the cold map's |max_eig| (the maps themselves take minutes: run by make bench)."""
    def surface(max_eig, min_eig, products, ways):
        return SimpleNamespace(values={hdf5_layout.MAX_EIG: np.array(max_eig), hdf5_layout.MIN_EIG: np.array(min_eig),
                                       hdf5_layout.HVP_COUNT: np.array(products), hdf5_layout.EIG_SOLVE: np.array(ways)})
    cold = surface([10.0, -20.0], [-1.0, -2.0], [42.0, 42.0], [0.0, 0.0])
    warm = surface([10.01, -20.0], [-1.0, -1.9], [42.0, 8.0], [0.0, 1.0])
    row = bench_hessian.compare([(cold, 8.0), (warm, 5.0)])
    assert row['cold']['products_per_point'] == 42.0 and row['warm']['products_per_point'] == 25.0
    assert row['cold']['seconds_per_point'] == 4.0 and row['warm']['seconds_per_point'] == 2.5
    assert row['max_difference_over_abs_max_eig'] == pytest.approx({'max_eig': 1e-3, 'min_eig': 5e-3})
    assert bench_hessian.loop_seconds('s.h5: 9 points computed in 12.5 s, surface complete') == 12.5


def test_bench_spectrum_table(tmp_path, capsys):
    from benchmarks import bench_spectrum
    out = tmp_path / 'spectrum.json'
    results = bench_spectrum.main(['--num_samples', '48', '--train_steps', '2', '--hvps', '2', '--threads', '1',
                                   '--seeds', '2', '--trace_budgets', '4', '8',
                                   '--pyhessian_path', str(tmp_path / 'none'), '--json', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results['parameters'] == 1864 and results['samples'] == 48
    assert set(results['hvp_per_second']) == {'double backward, graph rebuilt per product',
                                              'double backward, gradient graph kept',
                                              'forward-over-reverse, vmap blocks of 8'}
    exact = results['exact']
    for row in results['rows']:
        assert row['seeds'] == len(row['runs']) and row['seeds'] in (1, 2)
        assert row['eig_rms_rel_error'] == pytest.approx(
            np.sqrt(np.mean([((r['top_eig'] - exact['top']) / exact['top']) ** 2 for r in row['runs']])))
        assert row['trace_rms_rel_error'] == pytest.approx(
            np.sqrt(np.mean([((r['trace'] - exact['trace']) / exact['trace']) ** 2 for r in row['runs']])))
        assert row['eig_rms_rel_error'] < 1e-3
    budgets = {row['tool']: row for row in results['rows']}
    cheap, dearer = (budgets[f'this suite, Lanczos tol 0.001, krylov_trace {b}'] for b in (4, 8))
    assert dearer['products'] == cheap['products'] + 4        # the same eigen solve, 4 more trace products
    assert results['verdict'] is None                          # nothing to compare with
    assert 'PyHessian not found' in results['note'] and 'PyHessian not found' in capsys.readouterr().out


def test_bench_spectrum_verdict_needs_both_numbers_as_exact_as_pyhessian():
    from benchmarks.bench_spectrum import verdict
    row = lambda tool, eig, trace, seconds: {'tool': tool, 'eig_rms_rel_error': eig, 'trace_rms_rel_error': trace,
                                             'seconds': seconds}
    rows = [row('PyHessian 0.1', 1e-3, 0.05, 0.3), row('fast, trace too rough', 1e-8, 0.08, 0.05),
            row('as exact', 1e-8, 0.05, 0.12), row('more exact, slower', 1e-8, 0.01, 0.2)]
    assert verdict(rows) == {'row': 'as exact', 'speedup': pytest.approx(2.5)}
    assert verdict(rows[:2]) == {'row': None, 'speedup': None}


def test_bench_divergence_guard_compares_the_guard_with_the_post_op_always(tmp_path):
    from benchmarks import bench_divergence_guard
    from losslandscape.compute import bn_folding
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    out = tmp_path / 'guard.json'
    results = bench_divergence_guard.main(['--num_images', '8', '--batch_size', '4', '--points', '1', '--repeats', '2',
                                           '--threads', '1', '--json', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    seconds = results['seconds_per_point']
    assert set(seconds) == {'guarded', 'post-op always'} and all(s > 0 for s in seconds.values())
    assert results['guard_cost'] == pytest.approx(seconds['guarded'] / seconds['post-op always'])
    assert results['fused_calls'] == 19   # resnet20: every convolution but the two shortcuts'


def test_bench_memory_table_has_a_multiple_per_mode(capsys):
    """bench_memory.py on the tiny GPT-2: one row, a memory multiple and a time per point for each
    --dir_mode (the figures themselves are `make bench`'s)."""
    import re

    from benchmarks import bench_memory
    bench_memory.main(['--sizes', 'tiny', '--modes', 'resident', 'stream', 'seed'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith('tiny')]
    assert len(rows) == 1
    cells = re.findall(r'(-?[\d.]+)x \(([\d.]+)x\)\s+([\d.e+-]+) s/pt', rows[0])
    assert len(cells) == 3
    for net_of_activations, raw, seconds in cells:
        assert float(raw) >= float(net_of_activations) and float(seconds) > 0


def test_bench_standard_errors_compares_a_point_with_and_without_them(tmp_path):
    result = bench_standard_errors.main(['--num_images', '16', '--batch_size', '8', '--repeats', '1', '--threads', '1',
                                         '--json', str(tmp_path / 's.json')])
    before, after = result['seconds_per_point'].values()
    assert result['ratio'] == pytest.approx(after / before)
    assert json.loads((tmp_path / 's.json').read_text())['ratio'] == result['ratio']
