"""Ray job: HTML report of a segmentation or experiment folder (`ray job submit -- python jobs/report.py OUT`)."""

import sys

from stroke_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
