"""Declarative flow specs (workflows/*.yaml) as pydantic models; every knob has a name and a default.

``load_spec(path, overrides=["generate.n=20", "thresholds.dg_h_window=0.15"])`` reads YAML and applies
dotted overrides from the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from gen2d.scoring import RankThresholds


class TrainSpec(BaseModel):
    """Train a plugin (the generator, or a surrogate scorer) before the rest of the flow."""

    plugin: str
    kind: Literal["generator", "scorer"] = "generator"
    options: dict[str, Any] = Field(default_factory=dict)
    category: str = Field("gpu", description="FireWorks worker category")


class GenerateSpec(BaseModel):
    generator: str = "templates"
    options: dict[str, Any] = Field(default_factory=dict, description="generator constructor options")
    n: int | None = Field(None, description="how many structures (None: all the generator has)")
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict, description="generate() parameters, e.g. guidance")
    category: str = "gpu"


class ScorerSpec(BaseModel):
    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="scorer constructor options")
    batch_size: int = Field(32, description="candidates per scoring job")
    top_k: int | None = Field(None, description="score only the current top-k by rank (e.g. MLIP ΔG_H on 5)")
    where: list[str] = Field(
        default_factory=list,
        description="only candidates matching these filters, e.g. ['validity.strict.ok=true', 'nelements<=3']",
    )
    category: str = "cpu"


class ConfirmSpec(BaseModel):
    """The last stage of the funnel: DFT ΔG_H (``dgh.dft``, CP2K) on the top ``m`` after the MLIP stage.

    ``m = 0`` skips it. Where CP2K is missing, each candidate gets a ``calculator_unavailable`` result
    and the flow goes on.
    """

    m: int = Field(3, ge=0, description="DFT on the top m candidates by rank (0: no DFT)")
    scorer: str = Field("dgh.dft", description="the DFT scorer plugin")
    options: dict[str, Any] = Field(
        default_factory=dict, description="scorer options, e.g. {threads: 2, cp2k: {cutoff_ry: 400}}"
    )
    where: list[str] = Field(
        default_factory=lambda: ["validity.strict.ok=true"], description="only candidates matching these filters"
    )
    category: str = Field("dft", description="FireWorks worker category of the DFT job")

    def as_scorer_spec(self) -> ScorerSpec:
        """The stage as one more scoring step: ``scorer`` on the top ``m``, one candidate per job."""
        return ScorerSpec(
            name=self.scorer, options=self.options, batch_size=1, top_k=self.m, where=self.where, category=self.category
        )


class ImproveSpec(BaseModel):
    """One iteration of the HER loop (flow ``improve-her``).

    Pick the near-hits of ``set`` (|ΔG_H| of ``surrogate`` ≤ ``window``) where the surrogate is least certain
    (its calibrated uncertainty) and that have no DFT result yet; run ``dgh.dft`` on the ``k`` first; fine-tune
    ``chgnet-her`` on the new DFT frames (and ``extra_frames``); relabel the surrogate's training monolayers with
    it and retrain the ensemble; report what moved for the chosen candidates.
    """

    k: int = Field(3, ge=1, description="candidates sent to DFT")
    window: float = Field(0.5, gt=0, description="near-hit: |ΔG_H| of the surrogate at most this (eV)")
    surrogate: str = Field("dgh.dimenet", description="scorer whose value and calibrated uncertainty select")
    where: list[str] = Field(
        default_factory=lambda: ["validity.strict.ok=true"], description="only candidates matching these filters"
    )
    workdir: str = Field(
        "improve-her", description="DFT runs, the fine-tuned MLIP, the surrogate and the report (shared on a cluster)"
    )
    dft: dict[str, Any] = Field(default_factory=dict, description="dgh.dft options; its workdir is WORKDIR/dft")
    extra_frames: list[str] = Field(
        default_factory=list, description="earlier DFT run folders whose frames also train (e.g. dft-runs/reference)"
    )
    finetune: dict[str, Any] = Field(default_factory=dict, description="chgnet-her training options (epochs, ...)")
    surrogate_train: dict[str, Any] = Field(
        default_factory=dict, description="dgh.dimenet train options (n, epochs, n_models, data, ...)"
    )
    dft_category: str = "dft"
    train_category: str = "gpu"


class ReportSpec(BaseModel):
    out: str = "report"
    top_k: int = 10


class FlowSpec(BaseModel):
    """One flow: ``discover`` (train? → generate → score → rank → report), ``rank-cifs`` (ingest →
    score → rank → report), ``pretrain-surrogate`` (train a scorer) or ``improve-her`` (select → DFT →
    fine-tune → retrain the surrogate → report)."""

    flow: Literal["discover", "rank-cifs", "pretrain-surrogate", "improve-her"]
    name: str = "gen2d"
    set: str = Field("generated", description="candidate set the flow writes and ranks")
    store: str | None = Field(None, description="candidate store URI; None: $GEN2D_STORE on each worker")
    input: str | None = Field(None, description="rank-cifs: folder, ASE db or MC2D JSON to ingest")
    train: TrainSpec | None = None
    generate: GenerateSpec | None = None
    scorers: list[ScorerSpec] = Field(default_factory=list)
    confirm: ConfirmSpec = Field(
        default_factory=lambda: ConfirmSpec(m=0), description="DFT confirmation of the top m (default off: m = 0)"
    )
    thresholds: RankThresholds = Field(default_factory=RankThresholds)
    report: ReportSpec | None = Field(default_factory=ReportSpec)
    improve: ImproveSpec | None = Field(None, description="improve-her: one iteration of the DFT/MLIP/surrogate loop")

    def check_scorer_options(self) -> None:
        """Check each scorer's name and options against its plugin's ``Options`` model.

        Raises
        ------
        gen2d.scoring.ScorerOptionsError
            Naming the scorer entry and the bad option (an unknown scorer name too), so a typo fails
            when the flow is built, before any job runs.
        """
        for k, sc in enumerate(self.scorers):
            _check_scorer(f"scorers[{k}]", sc.name, sc.options)
        if self.confirm.m > 0:
            _check_scorer("confirm", self.confirm.scorer, self.confirm.options)
        if self.improve is not None:
            _check_scorer("improve.dft", "dgh.dft", self.improve.dft)


def _check_scorer(where: str, name: str, options: dict[str, Any]) -> None:
    """``name``'s options (and ``dgh.dft``'s ``cp2k`` settings) checked; an error names ``where`` in the spec."""
    from gen2d.scoring import ScorerOptionsError, validate_scorer_options

    try:
        validate_scorer_options(name, options)
        if name == "dgh.dft" and options.get("cp2k"):
            _check_cp2k_settings(options["cp2k"])
    except KeyError as exc:
        raise ScorerOptionsError(f"{where}: {exc.args[0]}") from None
    except ScorerOptionsError as exc:
        raise ScorerOptionsError(f"{where}: {exc}") from None


def _check_cp2k_settings(options: dict[str, Any]) -> None:
    """The ``cp2k`` options of ``dgh.dft`` checked against ``Cp2kSettings`` (skipped where the plugin is absent)."""
    from pydantic import ValidationError

    from gen2d.scoring import ScorerOptionsError

    try:
        from gen2d_cp2k.settings import Cp2kSettings
    except ImportError:
        return
    try:
        Cp2kSettings(**options)
    except ValidationError as exc:
        bad = ", ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ScorerOptionsError(f"scorer dgh.dft: bad cp2k settings ({bad})") from None


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if isinstance(cur, list):
            cur = cur[int(k)]
        else:
            cur = cur.setdefault(k, {})
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def read_spec_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML spec as a dict, with ``key.sub=value`` overrides applied (values parsed as YAML; list
    items by index, e.g. ``arms.3.generator=...``)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for ov in overrides or []:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} is not KEY=VALUE")
        k, v = ov.split("=", 1)
        _set_dotted(raw, k.strip(), yaml.safe_load(v))
    return raw


def load_spec(path: str | Path, overrides: list[str] | None = None) -> FlowSpec:
    """Read a YAML flow spec and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    return FlowSpec.model_validate(read_spec_yaml(path, overrides))
