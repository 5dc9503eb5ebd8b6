"""benchmarks/bench_io.py still runs and reports consistent figures (on tiny grids; no timing is
asserted: speed is judged from `make bench` output, never by tests)."""
import json

import pytest

from benchmarks import bench_io


def test_bench_io_table(tmp_path, capsys):
    out = tmp_path / 'io.json'
    results = bench_io.main(['--grids', '3', '5', '--data_split', '20', '--json', str(out)])
    assert json.dumps(json.loads(out.read_text())) == json.dumps(results)   # as text: NaN equals itself
    rows = results['rows']
    assert len(rows) == 3 and any(label.startswith('plot_surface.py') for label in rows)
    for label, row in rows.items():
        arrays = len(bench_io.STORE_NAMES) if label.startswith('store') else 2   # without --eval_test: 2
        for n in (3, 5):
            cell = row[str(n)]
            assert cell['points'] == n * n                      # every point computed and stored
            assert cell['array_bytes'] >= arrays * n * n * (8 + 1)
            assert cell['file_over_arrays'] == pytest.approx(cell['file_bytes'] / cell['array_bytes'])
        if row['3']['s_per_point'] > 0:
            assert row['large_over_small_per_point'] == pytest.approx(row['5']['s_per_point'] / row['3']['s_per_point'])
        else:   # a tiny run reported 0.00 s
            assert row['large_over_small_per_point'] != row['large_over_small_per_point']
    table = capsys.readouterr().out
    assert 'store, flush after every point' in table and '5x5' in table and 'ratio' in table
