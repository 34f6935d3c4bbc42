"""A tiny EGNN diffusion model trained in-process on a few real 2DMatPedia monolayers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gen2d.diffusion.train import TrainConfig, load_checkpoint, train


def tiny_config(out_dir: Path, **over) -> TrainConfig:
    fields = dict(
        sources=["2dmatpedia_filtered.db"],
        max_records=12,
        max_atoms=6,
        val_fraction=0.0,
        hidden=32,
        n_layers=2,
        n_cond_layers=1,
        batch_size=12,
        lr=2e-3,
        max_steps=120,
        cond_dropout=0.15,
        checkpoint_every=1000,
        log_every=20,
        device="cpu",
        num_threads=1,
        out_dir=str(out_dir),
        progress=False,
        seed=0,
    )
    fields.update(over)
    return TrainConfig(**fields)


@pytest.fixture(scope="session")
def data_available() -> None:
    from gen2d.settings import get_settings

    root = get_settings().data_dir
    assert (root / "2dmatpedia_filtered.db").exists(), f"reference data missing under {root}"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, data_available):
    """Trained for 120 steps with a synthetic dg_h label (0.5 x layer thickness in Å, as 'eV') so
    the dg_h head has something to learn and guidance has a gradient to follow."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("egnn_tiny")
    from gen2d.diffusion.train import load_training_set

    cfg = tiny_config(out)
    recs, _ = load_training_set(cfg)
    labels = {r.source_id: 0.5 * r.thickness for r in recs}
    (out / "dgh.json").write_text(__import__("json").dumps(labels))
    summary = train(cfg.model_copy(update={"dg_h_labels": str(out / "dgh.json")}))
    bundle, _ = load_checkpoint(summary["checkpoint"], "cpu")
    bundle.meta["log_path_for_tests"] = str(out / "train_log.jsonl")
    return bundle
