"""plot_1D.py, where users of the original code look for it: the 1D figures of a surface file.

The script is losslandscape.plot_1D (``python -m losslandscape.plot_1D`` from any folder once the
package is installed); this file only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.plot_1D import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
