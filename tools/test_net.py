#!/usr/bin/env python
"""``python tools/test_net.py ...``: runs ``rcnn.commands.test_net`` (console command ``detectron-test-net``)."""
import sys

from rcnn.commands.test_net import main

if __name__ == "__main__":
    sys.exit(main())
