"""The evaluation spec: arms, sweeps, scorers and budgets, loaded from YAML with CLI overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from gen2d.scoring import RankThresholds


class ScorerRef(BaseModel):
    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="scorer constructor options")
    batch_size: int = 16


class ArmSpec(BaseModel):
    """One way of producing candidates."""

    name: str
    kind: Literal["generator", "filter"] = Field(
        "generator",
        description="generator: its samples are the output; filter: its samples are ranked by "
        "the filter scorers and the top `keep` are the output",
    )
    generator: str = Field(
        "egnn-diffusion", description="registered generator name, or module:attr of an unregistered generator class"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="generator constructor options")
    params: dict[str, Any] = Field(
        default_factory=dict, description="generate() parameters (guidance, start, n_steps, ...)"
    )
    cycle_templates: bool = Field(
        True,
        description="pass each chunk the next templates of a seeded shuffle "
        "(template-start diffusion and substitution)",
    )
    keep: int | None = Field(None, description="filter: how many of the best to keep (default n_eval)")
    filter_require_strict: bool = Field(True, description="filter: only strictly valid samples are kept")
    filter_max_elements: int | None = Field(3, description="filter: only samples of at most this many elements")
    n_eval: int | None = Field(None, description="override of the spec's n_eval for this arm")
    group: Literal["main", "sweep"] = "main"
    description: str = ""


class SweepSpec(BaseModel):
    """Vary one guidance parameter of ``base`` (the others held at ``fixed``)."""

    parameter: Literal["eta", "cfg_weight"]
    values: list[float]
    base: str = Field("full", description="the arm whose parameters are varied")
    fixed: dict[str, Any] = Field(default_factory=dict, description="guidance fields held fixed")
    n_eval: int | None = Field(None, description="evaluated samples per sweep point and seed")


class EvaluateScorers(BaseModel):
    e_hull: ScorerRef = Field(
        default_factory=lambda: ScorerRef(name="ehull.chgnet", options={"progress": False, "max_elements": 3})
    )
    dg_h: ScorerRef = Field(default_factory=lambda: ScorerRef(name="dgh.dimenet", batch_size=64))
    p_synth: ScorerRef = Field(default_factory=lambda: ScorerRef(name="synth.pu", batch_size=256))
    confirm: ScorerRef | None = Field(
        default_factory=lambda: ScorerRef(
            name="dgh.mlip", options={"calculator": "chgnet", "max_sites_per_face": 2}, batch_size=1
        )
    )
    filter: list[ScorerRef] = Field(
        default_factory=lambda: [
            ScorerRef(name="dgh.dimenet", batch_size=64),
            ScorerRef(name="synth.pu", batch_size=256),
        ]
    )


class TrainingSetSpec(BaseModel):
    """The novelty reference: the generator's training set, read with the same filters it was trained with."""

    sources: list[str] = Field(default_factory=lambda: ["2dmatpedia_filtered.db", "mc2d_258_exfoliable.json"])
    max_atoms: int = 40
    max_thickness: float = 8.0


class EvaluateSpec(BaseModel):
    name: str = "evaluate"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    budget_cpu_s: float = Field(20.0, description="generation CPU-seconds per arm and seed")
    chunk: int = Field(9, description="samples per generate() call")
    max_generated: int = Field(5000, description="stop an arm early past this many samples")
    n_eval: int = Field(6, description="samples per arm and seed that get the full scoring")
    templates: list[str] | None = Field(None, description="templates cycled through (default: the library)")
    arms: list[ArmSpec] = Field(default_factory=list)
    sweeps: list[SweepSpec] = Field(default_factory=list)
    scorers: EvaluateScorers = Field(default_factory=EvaluateScorers)
    thresholds: RankThresholds = Field(default_factory=RankThresholds)
    training_set: TrainingSetSpec = Field(default_factory=TrainingSetSpec)
    require_any_of: list[list[str]] | None = Field(
        None,
        description="a kind of compound every arm must deliver: groups of elements, each output holding an atom of "
        "every group (e.g. a transition metal and a chalcogen). Passed to each arm's generate() (the EGNN "
        "sampler enforces it; other generators ignore it), and an output that misses a group is never "
        "scored (its generation CPU still counts; `n_off_kind` per arm-seed). None = any composition",
    )
    threads: int = Field(1, description="torch threads")
    out: str = Field("evaluate-out", description="folder for the JSON and the plots")

    def all_arms(self) -> tuple[list[ArmSpec], dict[str, str]]:
        """Main arms plus the sweep points; and, for a sweep point equal to another arm, that arm's name."""
        arms = list(self.arms)
        by_name = {a.name: a for a in arms}
        alias: dict[str, str] = {}
        for sw in self.sweeps:
            base = by_name[sw.base]
            for v in sw.values:
                guidance = dict(base.params.get("guidance") or {})
                if not isinstance(guidance, dict):
                    raise ValueError(f"sweep base {sw.base} needs its guidance as a dict")
                guidance.update(sw.fixed)
                guidance[sw.parameter] = float(v)
                arm = base.model_copy(
                    deep=True,
                    update={
                        "name": f"{sw.parameter}={v:g}" + "".join(f",{k}={w}" for k, w in sorted(sw.fixed.items())),
                        "params": {**base.params, "guidance": guidance},
                        "group": "sweep",
                        "n_eval": sw.n_eval or base.n_eval,
                        "description": f"sweep of {sw.parameter} on {sw.base}: {sw.parameter}={v:g}, fixed {sw.fixed}",
                    },
                )
                same = next((a.name for a in arms if _arm_key(a) == _arm_key(arm)), None)
                if same is not None:
                    alias[arm.name] = same
                    continue
                arms.append(arm)
        return arms, alias


def _arm_key(arm: ArmSpec) -> str:
    def norm(g: Any) -> Any:
        if isinstance(g, dict):
            return {k: norm(v) for k, v in sorted(g.items())}
        if isinstance(g, (int, float)) and not isinstance(g, bool):
            return float(g)
        return g

    key = {"kind": arm.kind, "generator": arm.generator, "options": arm.options, "params": arm.params, "keep": arm.keep}
    # fields that change what an arm outputs, keyed when they differ from their defaults (so the keys of stored
    # results made with the defaults stay as they were)
    for name in ("cycle_templates", "filter_require_strict", "filter_max_elements"):
        value = getattr(arm, name)
        if value != ArmSpec.model_fields[name].default:
            key[name] = value
    return json.dumps(norm(key), sort_keys=True)


def load_evaluate_spec(path: str | Path, overrides: list[str] | None = None) -> EvaluateSpec:
    """Read an evaluation spec (YAML) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    from gen2d.config import read_spec_yaml

    return EvaluateSpec.model_validate(read_spec_yaml(path, overrides))
