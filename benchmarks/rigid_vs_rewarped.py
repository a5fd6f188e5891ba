"""Kept for the command in RESULTS.md: the same as ``python benchmarks/vs_rewarped.py --task ant``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_rewarped import main  # noqa: E402

if __name__ == "__main__":
    if "--task" not in sys.argv:
        sys.argv[1:1] = ["--task", "ant"]
    main()
