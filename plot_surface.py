"""plot_surface.py, where users of the original code look for it: loss and accuracy on a 1D or 2D grid around a trained model.

The script is losslandscape.plot_surface (``python -m losslandscape.plot_surface`` from any folder once the
package is installed); this file only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.plot_surface import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
