"""The command line: the parser every script uses, the one-line bad-input error (exit status 2), the
grid scripts' flag groups.
"""
