"""plot_trajectory.py, where users of the original code look for it: the optimizer's path projected on the principal directions of its checkpoints.

The script is losslandscape.plot_trajectory (``python -m losslandscape.plot_trajectory`` from any folder once the
package is installed); this file only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.plot_trajectory import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
