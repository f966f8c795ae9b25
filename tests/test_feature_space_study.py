"""One image pool curated in three feature spaces by the real workflow (issue 18): raw pixels, the embeddings of
an SSL encoder of the study, and a pretrained backbone read from local files (a tiny DINOv2 with random weights),
each with its leakage check (and decontamination in the raw space). Slow: six Ray jobs on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import snakemake

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e


def test_one_image_pool_in_three_spaces(tmp_path: Path) -> None:
    model = tmp_path / "models" / "dino"
    transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=16, patch_size=8,
        num_channels=3)).save_pretrained(model)
    hk = {"method": "hkmeans", "target_size": 60, "n_clusters": [8, 3], "n_resamples": 2, "n_iters": 10}
    config = {
        "study": "three-spaces", "seeds": [0],
        "datasets": {"img": {"kind": "digits-images", "n_max": 40, "image_size": 8,
                             "probe_train_per_class": 10, "probe_test_per_class": 10}},
        "curations": {"hk_raw": {**hk, "features": "raw", "decontaminate": True},
                      "hk_ssl": {**hk, "features": "simclr"},
                      "hk_dino": {**hk, "features": {"backbone": str(model), "name": "dino"}}},
        "ssl": {"simclr": {"method": "simclr", "steps": 4, "batch_size": 16, "embedding_dim": 8,
                           "resnet_widths": [4, 8], "resnet_blocks": [1, 1]}},
        "evaluation": {"cluster_n_init": 1, "linear_probe": False},
        "report": {"figures": False},
        "summary": {"baseline": "hk_raw"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, configfile=path)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    root = tmp_path / "results" / "img"
    assert sorted(p.name for p in (root / "features").iterdir()) == ["dino"]
    expected = {"none": "raw", "hk_raw": "raw", "hk_ssl": "simclr", "hk_dino": "dino"}
    for curation, label in expected.items():
        stats = json.loads((root / "curate" / curation / "seed0" / "stats.json").read_text())
        assert stats["feature_space"] == label
        leak = stats["leakage"]
        assert leak["near_space"] == label and set(leak["per_split"]) == {"probe_train", "probe_test"}
        assert leak["exact"] == 0  # digits-images: probes and pool are disjoint scans
        if curation != "none":  # the pretrain-on-pool job's curation: its leakage check runs too, no variant
            metrics = json.loads((root / "evaluate" / curation / "simclr" / "seed0" / "metrics.json").read_text())
            assert 0 <= metrics["metrics"]["knn_accuracy"] <= 1
    raw = json.loads((root / "curate" / "hk_raw" / "seed0" / "stats.json").read_text())["leakage"]
    assert raw["decontaminated"] and raw["removed"] == raw["flagged"]
