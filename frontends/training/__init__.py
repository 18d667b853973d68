"""Training, evaluation and the release tools of the tri-mode model.

``command`` is ``graphrt train`` (its arguments and the run; the objective in docs/design.md,
"The shipped model"), over ``corpus`` (the Python standard library's source, split), ``data``
(token streams and windows), ``objective`` (packed batches and their losses), ``measure`` (draft
quality and held-out losses) and ``loop`` (the training loop, schedules, log, resume state,
export); ``drafter`` trains a LoRA drafter on a frozen base. ``evaluate`` is ``graphrt eval``
(TPF and quality per mode on held-out prompts). The release tools ``measure_drafts`` and
``ship_model`` (``python -m graphrt.frontends.training.ship_model RUN_DIR``) measure a finished run
and copy it into ``frontends/model/``.

This room imports the core, ``graphrt.frontends.models`` and the command line's JSON writer
(``graphrt.frontends.cli.write_json``); nothing here is imported by decoding.
"""
