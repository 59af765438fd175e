"""``python -m classification {fit,validate,test,cost,search} --config ...``: see classification/cli.py."""

from .cli import main

if __name__ == "__main__":
    main()
