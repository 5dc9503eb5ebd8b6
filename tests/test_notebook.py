"""The example notebook examples/from_a_notebook.ipynb: committed without outputs, and run from top to
bottom by a Jupyter kernel of this Python (nbclient, ipykernel: the 'test' extra) without an error,
showing its figures as pictures."""
import base64
import json
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'examples', 'from_a_notebook.ipynb')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
KERNEL_NAME = 'losslandscape-test'


def test_the_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == 'code']
    assert code, 'the notebook has no code'
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def this_pythons_kernel(folder):
    """A kernel manager whose kernel is this interpreter (sys.executable), whatever kernels
    Jupyter has installed: the notebook must run against this checkout and its environment."""
    spec_folder = folder / 'kernels' / KERNEL_NAME
    spec_folder.mkdir(parents=True)
    (spec_folder / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'losslandscape tests', 'language': 'python'}))
    specs = KernelSpecManager(kernel_dirs=[str(folder / 'kernels')])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
    """The notebook after a run in a fresh folder (the kernel's working folder), one thread."""
    folder = tmp_path_factory.mktemp('notebook')
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The checkout's package first (as conftest.run_script does), one thread as every test has, and
    # matplotlib's backend left to the kernel (Jupyter's inline one), as a user's notebook has it.
    env = {key: value for key, value in os.environ.items() if key != 'MPLBACKEND'}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    client = NotebookClient(notebook, km=this_pythons_kernel(folder), timeout=120,
                            resources={'metadata': {'path': str(folder)}})
    client.execute(env=env, cwd=str(folder))
    return notebook


def test_the_notebook_runs_and_shows_its_figures(executed):
    code = [cell for cell in executed.cells if cell.cell_type == 'code']
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == 'error']
    assert all(cell.execution_count for cell in code)
    pictures = [base64.b64decode(output.data['image/png']) for output in outputs
                if output.output_type in ('execute_result', 'display_data') and 'image/png' in output.data]
    # contour, filled contour, 3D surface, loss curve
    assert len(pictures) == 4
    assert all(picture.startswith(PNG_SIGNATURE) for picture in pictures)
    # save= wrote what the last cell lists.
    assert code[-1].outputs[-1].data['text/plain'] == "['heat.pdf', 'heat.png']"
