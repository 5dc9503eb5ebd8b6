"""The command line: the parser every script uses, the one-line bad-input error (exit status 2), the
grid scripts' flag groups.
"""

from losslandscape.cli.parsing import (
    ArgumentParser,
    DefaultsHelpFormatter,
    check_file_exists,
    check_output_folder,
    check_writable_folder,
    run_as_script,
    run_main,
)

__all__ = [
    # parsing
    'ArgumentParser', 'DefaultsHelpFormatter', 'run_main', 'run_as_script', 'check_file_exists',
    'check_output_folder', 'check_writable_folder',
]
