#!/usr/bin/env python
"""``python tools/train_net_step.py ...``: runs ``rcnn.commands.train_net_step`` (console command ``detectron-train``)."""
import sys

from rcnn.commands.train_net_step import main

if __name__ == "__main__":
    sys.exit(main())
