"""Ray job: train the three plane models (`ray job submit -- python jobs/train.py --cohort … --out …`)."""

import sys

from stroke_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
