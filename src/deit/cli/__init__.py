"""The `deit` command: `deit demo`, `deit train`, `deit cache-teacher`, `deit predict`, `deit attention`,
`deit eval`, `deit export`, `deit benchmark`, `deit models`, `deit convert`, `deit serve`, `deit shard`.

Flag names follow the official DeiT `main.py` where the concept exists. Errors in what the user gave (a missing
file, a checkpoint of another model, a bad value) print one line and exit with status 2; the exit codes of every
command are in `failures.py`. DEIT_DEBUG=1 shows the traceback instead.
"""

from .flags import flag_name
from .parser import build_parser, main

__all__ = ["build_parser", "flag_name", "main"]
