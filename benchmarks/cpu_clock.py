"""Run a timing script with ``time.time`` and ``time.perf_counter`` replaced by this process's CPU clock.

    python benchmarks/cpu_clock.py SCRIPT [ARGS ...]

``benchmarks/vs_rewarped.py --clock cpu`` runs Rewarped's ``shared/tools/rewarped/bench.py`` (which times with
``time.time``) through this, in Rewarped's own venv, so that both systems of a row are timed on the CPU clock of their
single-threaded process: time spent waiting for a core that other processes hold is not counted, where wall time on a
loaded 2-core machine counted it in whichever cell ran at the busier moment. Standard library only (it runs under
another venv's interpreter).
"""

import runpy
import sys
import time

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    time.time = time.process_time
    time.perf_counter = time.process_time
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
