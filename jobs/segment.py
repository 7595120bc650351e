"""Ray job: segment a cohort (`ray job submit -- python jobs/segment.py --cohort … --model … --out …`)."""

import sys

from stroke_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
