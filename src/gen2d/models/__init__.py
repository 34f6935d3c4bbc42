"""Network modules: the EGNN denoiser with property heads, and a periodic DimeNet++.

Each model serves one plugin, which owns it:

- :mod:`gen2d.models.egnn`: the ``egnn-diffusion`` generator (``plugins/gen2d_egnn``), with
  :mod:`gen2d.diffusion`;
- :mod:`gen2d.models.dimenet`: the ``dgh.dimenet`` scorer (``plugins/gen2d_dgh_dimenet``).

They live in the core so the shipped checkpoints (``gen2d/assets/egnn``, ``gen2d/assets/dgh_dimenet``) keep
loading by these module paths. The boundary: the rest of the core (structures, scoring, store, jobs, flows,
hull, adsorption, relax, evaluate, report, cli) never imports this package when it is imported
(``tests/test_import_boundaries.py``), so torch models load only when such a plugin runs.
"""
