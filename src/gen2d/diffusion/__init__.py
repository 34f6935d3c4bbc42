"""Diffusion pieces kept apart so each can change alone: noise schedule, training loss, sampler.

Owned by the ``egnn-diffusion`` generator (``plugins/gen2d_egnn``) together with
:mod:`gen2d.models.egnn`. The rest of the core never imports this package when it is imported
(``tests/test_import_boundaries.py``); the evaluation suite calls
:func:`gen2d.diffusion.train.load_training_set` at run time only, to measure novelty against the EGNN's
training set.
"""
