"""EGNN diffusion generator plugin: samples monolayers from the shipped (or a given) checkpoint.

``train(config)`` and ``generate(n, seed, guidance=...)`` are what ``gen2d train`` / ``gen2d generate``
call; :class:`EGNNDiffusionGenerator` is the registry entry (``gen2d.generators: egnn-diffusion``).
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gen2d.scoring import GeneratedStructure, PluginUnavailable

__version__ = "0.1.0"
NAME = "egnn-diffusion"

GUIDANCE_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"cfg_weight": None, "eta": 0.0},
    "cfg": {"cfg_weight": 2.0, "eta": 0.0},
    "gradient": {"cfg_weight": None, "eta": 0.05},
    "both": {"cfg_weight": 2.0, "eta": 0.05},
    "steered": {"cfg_weight": None, "eta": 0.0, "steering": {}},
}
"""Named guidance settings; a dict of :class:`gen2d.diffusion.sampler.SamplingConfig` fields also works.

``steered`` resamples each batch on the scorers' reward of its clean estimates (the defaults of
:class:`gen2d.diffusion.steering.SteeringConfig`: ``dgh.dimenet``, ``synth.pu`` and the ``stability.chgnet``
single-point proxy, λ = 0.5, every 5 steps below 0.25 T, ESS threshold 0.5); it needs no property heads."""


def shipped_checkpoint() -> Path:
    """Path of the checkpoint shipped in ``gen2d/assets/egnn``."""
    return Path(str(importlib.resources.files("gen2d") / "assets" / "egnn" / "egnn_diffusion.pt"))


def sampling_config(guidance: str | dict[str, Any] | None = None, **overrides: Any):
    """A :class:`SamplingConfig` from a preset name or a dict, plus keyword overrides."""
    from gen2d.diffusion.sampler import SamplingConfig

    if guidance is None:
        fields: dict[str, Any] = {}
    elif isinstance(guidance, str):
        if guidance not in GUIDANCE_PRESETS:
            raise ValueError(f"unknown guidance {guidance!r}; choose from {sorted(GUIDANCE_PRESETS)} or give a dict")
        fields = copy.deepcopy(GUIDANCE_PRESETS[guidance])  # a preset's nested dicts are never shared
    else:
        fields = dict(guidance)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return SamplingConfig(**fields)


class EGNNDiffusionGenerator:
    """Generator protocol implementation around a trained EGNN diffusion checkpoint.

    Parameters
    ----------
    checkpoint : str or Path, optional
        Default: the shipped checkpoint.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    """

    name = NAME

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto"):
        self.checkpoint = Path(checkpoint) if checkpoint else shipped_checkpoint()
        self.device = device
        self._bundle = None

    def available(self) -> tuple[bool, str]:
        if not self.checkpoint.exists():
            return False, f"checkpoint {self.checkpoint} not found (train one with `gen2d train --generator {NAME}`)"
        return True, ""

    @property
    def bundle(self):
        if self._bundle is None:
            ok, why = self.available()
            if not ok:
                raise PluginUnavailable(why)
            from gen2d.diffusion.train import load_checkpoint

            self._bundle, _ = load_checkpoint(self.checkpoint, self.device)
        return self._bundle

    def provenance(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "plugin": NAME,
            "version": __version__,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": b.sha256,
            "schedule": b.schedule.to_dict(),
            "train_steps": b.meta.get("steps"),
            "train_sources": b.meta.get("sources"),
        }

    def generate(
        self,
        n: int | None = None,
        seed: int = 0,
        guidance: str | dict[str, Any] | None = None,
        start: str = "free",
        templates: list[str] | None = None,
        n_steps: int | None = None,
        validate: bool = True,
        progress: bool = False,
        **sampling: Any,
    ) -> Iterator[GeneratedStructure]:
        """Sample ``n`` monolayers.

        Parameters
        ----------
        n : int
            Number of structures (default 16).
        seed : int
            Seeds the whole run: atom counts, prior draws and every step's noise.
        guidance : str or dict, optional
            ``none``, ``cfg``, ``gradient``, ``both``, ``steered`` or SamplingConfig fields (``cfg_weight``,
            ``eta``, ``targets``, ``steering``...). Further SamplingConfig fields go in ``**sampling``, e.g.
            ``elements`` (a chemical space: only these elements are sampled).
        start : str
            ``free`` (atom count from the training histogram, lattice diffused) or ``templates``
            (lattice and atom count of built-in templates, cycled).
        templates : list of str, optional
            Template names for ``start="templates"`` (default: all; with ``elements``, those inside the
            chemical space).
        n_steps : int, optional
            Respace the training schedule to this many steps (default: all T).
        validate : bool
            Attach ``validate_strict`` results to each output's labels.
        """
        from gen2d.diffusion.sampler import sample, template_starts

        n = 16 if n is None else int(n)
        cfg = sampling_config(guidance, n_steps=n_steps, **sampling)
        bundle = self.bundle
        from gen2d.diffusion.sampler import ElementsOutsideVocabulary, blocked_types, required_groups

        try:
            blocked_types(bundle.rep.vocab, cfg.elements)
            required_groups(bundle.rep.vocab, cfg.require_any_of, cfg.elements)
        except ElementsOutsideVocabulary as exc:
            raise PluginUnavailable(str(exc)) from None
        if start == "free":
            samples = sample(bundle, n, seed, cfg, self.device, progress=progress)
        elif start == "templates":
            from gen2d.data import templates as tmpl

            names = templates or tmpl.list_templates()
            if cfg.elements is not None:  # a chemical space keeps only the templates inside it
                space = set(cfg.elements)
                names = [nm for nm in names if {e.symbol for e in tmpl.build_template(nm).composition} <= space]
                if not names:
                    raise PluginUnavailable(f"no template lies inside the chemical space {sorted(space)}")
            if cfg.require_any_of:  # and of the kind of compound asked for, when any is
                from gen2d.diffusion.composition import meets

                kind = [
                    nm
                    for nm in names
                    if meets((e.symbol for e in tmpl.build_template(nm).composition), cfg.require_any_of)
                ]
                names = kind or names
            picked = [names[i % len(names)] for i in range(n)]
            # one batch for all templates (up to max_atoms_per_batch), in the order asked: a batched forward
            # pass, and with steering the batch is the particle population
            starts, skipped = template_starts(bundle, picked, max_atoms_per_batch=cfg.max_atoms_per_batch)
            if not starts:
                raise PluginUnavailable(f"no usable template: {skipped}")
            samples = sample(bundle, n, seed, cfg, self.device, starts=starts, progress=progress)
        else:
            raise ValueError(f"start must be 'free' or 'templates', not {start!r}")
        prov = self.provenance()
        for i, smp in enumerate(samples):
            structure = smp.to_structure(cfg.vacuum)
            labels: dict[str, Any] = {f"predicted_{k}": v for k, v in smp.predicted.items()}
            labels["predicted_units"] = {
                "predicted_dg_h": "eV",
                "predicted_e_hull": "eV/atom",
                "predicted_p_synth": "probability",
            }
            if validate:
                from gen2d.structures import strict_verdict

                labels["strict_valid"], labels["strict_reasons"] = strict_verdict(structure)
            flags = {"guidance_diverged": smp.diagnostics} if smp.diverged else {}
            yield GeneratedStructure(
                structure=structure,
                source_id=f"{NAME}:seed{seed}:{i}",
                flags=flags,
                parameters={
                    "generator": NAME,
                    "seed": seed,
                    "index": i,
                    "start": smp.start,
                    "guidance": guidance if isinstance(guidance, (str, type(None))) else "custom",
                    "sampling": cfg.model_dump(mode="json"),
                    "diagnostics": smp.diagnostics,
                    **prov,
                },
                labels=labels,
            )


def train(config: str | Path | dict | None = None, **overrides: Any) -> dict[str, Any]:
    """Train from a YAML file (its ``train:`` section) or a dict; keyword overrides win."""
    import yaml

    from gen2d.diffusion.train import train as run_training

    if config is None:
        fields: dict[str, Any] = {}
    elif isinstance(config, dict):
        fields = dict(config.get("train", config))
    else:
        raw = yaml.safe_load(Path(config).read_text()) or {}
        fields = dict(raw.get("train", raw))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return run_training(fields)


def generate(
    n: int = 16,
    seed: int = 0,
    guidance: str | dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    **params: Any,
) -> list[GeneratedStructure]:
    """Sample ``n`` structures; see :meth:`EGNNDiffusionGenerator.generate`."""
    gen = EGNNDiffusionGenerator(checkpoint=checkpoint, device=device)
    return list(gen.generate(n=n, seed=seed, guidance=guidance, **params))
