"""plot_2D.py, where users of the original code look for it: the 2D figures of a surface file.

The script is losslandscape.plot_2D (``python -m losslandscape.plot_2D`` from any folder once the
package is installed); this file only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.plot_2D import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
