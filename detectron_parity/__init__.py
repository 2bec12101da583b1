"""The layer below ``rcnn``, ``convert`` and ``parity``: what all three share and none owns.

``errors`` (the one base of user errors), ``fileio`` (input opening, atomic writes),
``timing`` (alternating A/B pairs), ``logformat`` (the ``json_stats`` line) and ``cli``
(common flags, the error-to-exit-status wrapper). It imports only the standard library, so
every package may import it and it never imports them (``tests/test_layout.py``); see
docs/layout.md.
"""
