"""Child process of bench.pipeline: ``python -m bench.pipeline_rss ROOT SIZE`` prints peak RSS."""

import sys

from bench.pipeline import peak_rss_child

if __name__ == "__main__":
    peak_rss_child(sys.argv[1], int(sys.argv[2]))
