"""``python -m cifar10.main``, as in the original code: trains a classifier and keeps its
checkpoints. The script is losslandscape.train (``python -m losslandscape.train`` from any folder
once the package is installed); this module only runs it from the checkout, with the same flags.
"""
from losslandscape.cli.parsing import run_as_script
from losslandscape.train import get_args_parser, main  # noqa: F401  (launchers reuse the parser)

if __name__ == '__main__':
    run_as_script(main)
