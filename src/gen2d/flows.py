"""Flows built from a :class:`gen2d.config.FlowSpec`: ``discover``, ``rank-cifs``, ``pretrain-surrogate``.

Training and generation carry the ``gpu`` worker category, scoring ``cpu`` and the DFT confirmation
``dft``. Scorers run in the order listed; a scorer with ``top_k`` runs after an intermediate ranking;
the ``confirm`` stage (``dgh.dft`` on the top m) comes last, and a final ranking and the report close
the flow.
"""

from __future__ import annotations

from pathlib import Path

from jobflow import Flow

from gen2d.config import FlowSpec
from gen2d.jobs import GenerateMaker, IngestMaker, RankMaker, ReportMaker, ScoreMaker, TrainMaker, set_category


def _score_rank_report(spec: FlowSpec, first_output, jobs: list) -> Flow:
    store = spec.store
    prev = first_output
    thresholds = spec.thresholds.model_dump()
    steps = [(sc, f"score {sc.name}") for sc in spec.scorers]
    if spec.confirm.m > 0:
        # DFT is the last and dearest stage: rank on everything the cheaper scorers said, then confirm the top m
        steps.append((spec.confirm.as_scorer_spec(), f"confirm {spec.confirm.scorer}"))
    for sc, job_name in steps:
        if sc.top_k:
            rank = set_category(
                RankMaker(name="rank (interim)", sets=[spec.set], thresholds=thresholds).make(store, after=prev), "cpu"
            )
            jobs.append(rank)
            prev = rank.output
        maker = ScoreMaker(
            name=job_name,
            scorer=sc.name,
            options=sc.options,
            batch_size=sc.batch_size,
            top_k=sc.top_k,
            where=sc.where,
            set_name=spec.set,
            category=sc.category,
        )
        j = set_category(maker.make(store, after=prev), sc.category)
        jobs.append(j)
        prev = j.output
    rank = set_category(RankMaker(sets=[spec.set], thresholds=thresholds).make(store, after=prev), "cpu")
    jobs.append(rank)
    if spec.report is not None:
        rep = ReportMaker(sets=[spec.set], out_dir=str(Path(spec.report.out).absolute()), top_k=spec.report.top_k).make(
            store, after=rank.output
        )
        jobs.append(set_category(rep, "cpu"))
    return Flow(jobs, output=rank.output, name=spec.name)


def discover_flow(spec: FlowSpec) -> Flow:
    """Optionally train, then generate, score with each configured scorer, rank and report."""
    jobs = []
    ckpt = None
    if spec.train is not None:
        t = set_category(
            TrainMaker(plugin=spec.train.plugin, kind=spec.train.kind, options=spec.train.options).make(spec.store),
            spec.train.category,
        )
        jobs.append(t)
        ckpt = t.output
    g = spec.generate
    if g is None:
        raise ValueError("a discover flow needs a `generate` section")
    gen = set_category(
        GenerateMaker(
            generator=g.generator, options=g.options, n=g.n, seed=g.seed, params=g.params, set_name=spec.set
        ).make(spec.store, checkpoint=ckpt),
        g.category,
    )
    jobs.append(gen)
    return _score_rank_report(spec, gen.output.candidate_ids, jobs)


def rank_cifs_flow(spec: FlowSpec) -> Flow:
    """Ingest a CIF set (folder, ASE db or MC2D JSON), score it the same way, rank it."""
    if not spec.input:
        raise ValueError("a rank-cifs flow needs `input`: a folder, ASE db or MC2D JSON")
    ing = set_category(IngestMaker(path=spec.input, set_name=spec.set).make(spec.store), "cpu")
    return _score_rank_report(spec, ing.output.candidate_ids, [ing])


def pretrain_surrogate_flow(spec: FlowSpec) -> Flow:
    if spec.train is None:
        raise ValueError("a pretrain-surrogate flow needs a `train` section")
    t = set_category(
        TrainMaker(plugin=spec.train.plugin, kind=spec.train.kind, options=spec.train.options).make(spec.store),
        spec.train.category,
    )
    return Flow([t], output=t.output, name=spec.name)


def improve_her_flow(spec: FlowSpec) -> Flow:
    """One iteration of the HER loop: select (cpu) → ``dgh.dft`` (dft) → fine-tune ``chgnet-her`` (gpu) →
    relabel and retrain ``dgh.dimenet`` with it (gpu) → what moved (cpu). The steps hand each other folders under
    ``improve.workdir``, which on a cluster must be on a filesystem every worker sees."""
    from gen2d.jobs import improve_report_job, select_for_dft_job

    imp = spec.improve
    if imp is None:
        raise ValueError("an improve-her flow needs an `improve` section")
    work = Path(imp.workdir).absolute()
    dft_dir, tuned_dir, sur_dir = work / "dft", work / "chgnet-her", work / "dgh_dimenet"
    sel = set_category(select_for_dft_job(spec.store, spec.set, imp.k, imp.window, imp.surrogate, imp.where), "cpu")
    sel.name = "improve: select near-hits by uncertainty"
    dft = set_category(
        ScoreMaker(
            name="improve: dgh.dft",
            scorer="dgh.dft",
            options={"workdir": str(dft_dir), **imp.dft},
            batch_size=1,
            where=imp.where,
            set_name=spec.set,
            category=imp.dft_category,
        ).make(spec.store, candidate_ids=sel.output.candidate_ids),
        imp.dft_category,
    )
    ft_options = {"frames": [str(dft_dir), *imp.extra_frames], "out": str(tuned_dir), **imp.finetune}
    ft = set_category(
        TrainMaker(
            name="improve: fine-tune chgnet-her", plugin="chgnet-her", kind="calculator", options=ft_options
        ).make(spec.store, after=dft.output),
        imp.train_category,
    )
    label_mlip = {"calculator": "chgnet-her", "model": str(tuned_dir), **imp.surrogate_train.get("mlip", {})}
    sur_options = {**imp.surrogate_train, "out": str(sur_dir), "mlip": label_mlip}
    sur = set_category(
        TrainMaker(name="improve: retrain dgh.dimenet", plugin="dgh.dimenet", kind="scorer", options=sur_options).make(
            spec.store, after=ft.output
        ),
        imp.train_category,
    )
    mlip_options = {k: v for k, v in label_mlip.items() if k not in ("calculator", "model")}
    rep = set_category(
        improve_report_job(
            spec.store,
            sel.output,
            str(tuned_dir),
            str(sur_dir),
            str(work / "improve-her.json"),
            mlip_options=mlip_options,
            after=sur.output,
        ),
        "cpu",
    )
    rep.name = "improve: what moved"
    return Flow([sel, dft, ft, sur, rep], output=rep.output, name=spec.name)


def build_flow(spec: FlowSpec) -> Flow:
    """The flow of ``spec``; scorer options are checked first (:meth:`FlowSpec.check_scorer_options`)."""
    spec.check_scorer_options()
    return {
        "discover": discover_flow,
        "rank-cifs": rank_cifs_flow,
        "pretrain-surrogate": pretrain_surrogate_flow,
        "improve-her": improve_her_flow,
    }[spec.flow](spec)


def job_store(uri: str | None = None):
    """The jobflow JobStore from the same settings as the candidate store (outputs + a data store).

    Checkpoints and other blobs go to the ``data`` store (GridFS on MongoDB), never into documents.
    """
    from jobflow import JobStore
    from maggma.stores import GridFSStore, MemoryStore, MongoStore

    from gen2d.monty import LockedMontyStore
    from gen2d.store import _monty_path, resolve_store_uri

    uri = resolve_store_uri(uri)
    if uri.startswith("monty://"):
        path = _monty_path(uri)
        Path(path).mkdir(parents=True, exist_ok=True)
        # the same lock as the candidate store: maggma rewrites montydb's config files on every connect
        docs = LockedMontyStore("outputs", database_path=path, database_name="gen2d", storage="sqlite")
        data = LockedMontyStore("outputs_data", database_path=path, database_name="gen2d", storage="sqlite")
    elif uri.startswith("memory://"):
        name = uri[len("memory://") :] or "gen2d"
        docs, data = MemoryStore(f"{name}_outputs"), MemoryStore(f"{name}_outputs_data")
    else:
        from urllib.parse import urlsplit

        database = urlsplit(uri).path.lstrip("/") or "gen2d"
        docs = MongoStore.from_uri(uri, "outputs", database=database)
        data = GridFSStore.from_uri(uri, "outputs_data", database=database)
    return JobStore(docs, additional_stores={"data": data})


def evaluate_flow(spec) -> Flow:
    """The evaluation suite (:mod:`gen2d.evaluate`) as a flow: one ``cpu`` job per arm and seed, then the
    aggregation job that writes the JSON, table and plots.

    ``spec`` is a :class:`gen2d.evaluate.EvaluateSpec` (``load_evaluate_spec("workflows/evaluate.yaml")``).
    Arm jobs must run on one kind of node for their CPU budgets to be comparable.
    """
    from gen2d.evaluate import evaluate_jobs

    jobs, aggregate = evaluate_jobs(spec)
    for j in [*jobs, aggregate]:
        set_category(j, "cpu")
    return Flow([*jobs, aggregate], output=aggregate.output, name=spec.name)
