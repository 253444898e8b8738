"""Accuracy, two ways (DESIGN.md): labelled metrics (``metrics``: top-k, macro P/R/F1, MCC,
confusion) and fidelity to FP32 (``fidelity``: top-1 agreement, top-5 overlap, cosine).
Labelled datasets (ImageFolder, synset-named photos) live in ``datasets``. Torch-free, numpy only.
"""
