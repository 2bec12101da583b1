#!/usr/bin/env python
"""``python tools/infer_simple.py ...``: runs ``rcnn.commands.infer_simple`` (console command ``detectron-infer``)."""
import sys

from rcnn.commands.infer_simple import main

if __name__ == "__main__":
    sys.exit(main())
