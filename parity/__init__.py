"""COCO parity tools: exact pycocotools evaluation (:mod:`parity.evaluate`), the
``metrics.json`` schema (:mod:`parity.metrics`), comparison with Detectron's published
numbers (:mod:`parity.compare`, :mod:`parity.reference`), per-detection matching
(:mod:`parity.match`), training-loss curves (:mod:`parity.losses`) and the BENCHMARK.md
generator (:mod:`parity.benchmark_md`). Command line: ``python -m parity --help``.
"""
