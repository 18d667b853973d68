"""Training, the corpus and evaluation of the tri-mode model.

``corpus`` reads and splits the Python standard library's source, ``train``
is ``graphrt train`` (the objective in docs/design.md, "The shipped model") and
``evaluate`` is ``graphrt eval`` (TPF and quality per mode on held-out
prompts). Nothing here is imported by decoding.
"""
