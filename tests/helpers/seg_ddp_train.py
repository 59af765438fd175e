"""``python -m torch.distributed.run ... tests/helpers/seg_ddp_train.py OUT_DIR CONFIG [train args]``:
train with segmentation.train, then write this rank's parameter digests to OUT_DIR/rank{r}.json."""

import sys
from pathlib import Path

# the repository first (its packages, not tests/'s folders of the same names), then tests/ for helpers.*
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from segmentation import compat  # noqa: E402

compat.install()
from segmentation.train import main  # noqa: E402
from helpers.param_digest import rank, write  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    runner = main(sys.argv[2:])
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    write(model, out / f"rank{rank()}.json")
    (out / f"rank{rank()}_wrapper.txt").write_text(type(runner.model).__name__)
