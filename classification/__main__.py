"""``python -m classification {fit,validate,test,cost,search} --config ...``: see classification/cli.py.

A configuration error found before any work starts (a bad method argument, an unknown layer) is printed
as one line naming what was wrong, with exit code 2; any other error keeps its traceback.
"""

import sys

from .cli import main

if __name__ == "__main__":
    try:
        main()
    except Exception as err:
        if not getattr(err, "gradfilt_config_error", False):
            raise
        message = err.args[0] if len(err.args) == 1 else err
        print(f"python -m classification: error: {message}", file=sys.stderr)
        sys.exit(2)
