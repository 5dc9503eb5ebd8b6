"""h52vtp.py, where users of the original code look for it: a surface file as a ParaView .vtp file.

The script is losslandscape.h52vtp (``python -m losslandscape.h52vtp`` from any folder once the
package is installed); this file only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.h52vtp import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
