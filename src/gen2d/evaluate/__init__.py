"""The evaluation suite: generator arms side by side at an equal generation CPU budget, every arm scored
and counted the same way, each figure a mean with a 95 % Student-t interval over seeds.

``gen2d evaluate workflows/evaluate.yaml`` runs it in one process; :func:`gen2d.flows.evaluate_flow`
runs one job per arm and seed, then one aggregation job.

Equal budget, precisely: for every arm and seed, generation runs in chunks of ``chunk`` samples and
its CPU time is ``time.process_time()`` (all threads of the generating process) summed over the
chunks. A new chunk starts only while the CPU used so far plus the cost of the most expensive chunk so
far stays within ``budget_cpu_s``; the first chunk always runs. Loading a model and the first call
(warm-up) are not counted. A generate-then-filter arm spends the same budget on unguided generation
plus the surrogates that rank it. What each arm produced within the budget is then subsampled
uniformly (or, for a filter arm, its top ``keep``) to ``n_eval`` samples, which get the expensive
scorers; rates are measured on those and hits per CPU-hour extrapolate the hit rate to everything the
arm produced within the budget.

The package's rooms, in the order a run uses them:

- :mod:`gen2d.evaluate.spec`: the spec (arms, sweeps, scorers, budget) and its YAML loader;
- :mod:`gen2d.evaluate.arms`: one arm for one seed, generated within the budget, scored and counted;
- :mod:`gen2d.evaluate.aggregation`: metric definitions, means with intervals, plots and the table;
- :mod:`gen2d.evaluate.runner`: the whole run in one process, with its journal;
- :mod:`gen2d.evaluate.jobs`: the same as jobflow jobs.

Everything is importable from ``gen2d.evaluate`` itself, as before the split.
"""

from __future__ import annotations

from gen2d.evaluate.aggregation import (
    INFO_METRICS,
    RATE_METRICS,
    aggregate,
    comparisons,
    metric_definitions,
    results_table,
    write_plots,
)
from gen2d.evaluate.arms import (
    BudgetedRun,
    Resources,
    _filter_values,
    _score_all,
    generate_within_budget,
    load_generator,
    of_kind,
    run_arm_generation,
    run_arm_seed,
    score_samples,
    seed_metrics,
    select_for_evaluation,
    template_cycle,
    training_structures,
)
from gen2d.evaluate.jobs import evaluate_aggregate, evaluate_arm, evaluate_jobs
from gen2d.evaluate.runner import _model_identity, _run_key, run_evaluation
from gen2d.evaluate.spec import (
    ArmSpec,
    EvaluateScorers,
    EvaluateSpec,
    ScorerRef,
    SweepSpec,
    TrainingSetSpec,
    _arm_key,
    load_evaluate_spec,
)

__all__ = [
    "EvaluateSpec",
    "ArmSpec",
    "SweepSpec",
    "load_evaluate_spec",
    "run_evaluation",
    "aggregate",
    "results_table",
    "write_plots",
    "generate_within_budget",
    "evaluate_jobs",
]
