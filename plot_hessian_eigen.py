"""plot_hessian_eigen.py, where users of the original code look for it: Hessian eigenvalues at every grid point.

The script is losslandscape.plot_hessian_eigen (``python -m losslandscape.plot_hessian_eigen`` from any folder once the
package is installed); this file only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.plot_hessian_eigen import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
