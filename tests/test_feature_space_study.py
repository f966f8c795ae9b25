"""One image pool curated in three feature spaces by the real workflow (issue 18): raw pixels, the embeddings of
an SSL encoder of the study, and a pretrained backbone read from local files (a tiny DINOv2 with random weights),
each with its leakage check (and decontamination in the raw space); a chain that deduplicates (semdedup) and then
balances (hkmeans) what is left; and the backbone's features evaluated as they are (a frozen-feature baseline,
ssl method none). Slow: a dozen Ray jobs on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import snakemake
from metric_helpers import brute_force_knn

from workflow.tables import read_table

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
                      "hk_dino": {**hk, "features": {"backbone": str(model), "name": "dino"}},
                      "dedup": {"method": "semdedup", "n_clusters": [4], "n_iters": 10, "semdedup_epsilon": 0.01},
                      "dedup_hk": {**hk, "target_size": 40, "pool": "dedup"}},
        "ssl": {"simclr": {"method": "simclr", "steps": 4, "batch_size": 16, "embedding_dim": 8,
                           "resnet_widths": [4, 8], "resnet_blocks": [1, 1]},
                "dino_alone": {"method": "none", "features": {"backbone": str(model), "name": "dino"}}},
        "evaluation": {"cluster_n_init": 1, "linear_probe": False},
        "report": {"figures": False},
        "summary": {"baseline": "hk_raw"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, configfile=path)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    root = tmp_path / "results" / "three-spaces" / "img"
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

    # The chain: hkmeans ran on semdedup's selection, and stats.json reports the fraction kept at each step.
    dedup = pq.read_table(root / "curate" / "dedup" / "seed0" / "selection.parquet").column("id").to_pylist()
    chained = pq.read_table(root / "curate" / "dedup_hk" / "seed0" / "selection.parquet").column("id").to_pylist()
    assert len(dedup) > 40 and set(chained) <= set(dedup) and len(chained) == 40
    chain = json.loads((root / "curate" / "dedup_hk" / "seed0" / "stats.json").read_text())["chain"]
    pool_size = pq.read_metadata(root / "data" / "pool.parquet").num_rows
    assert [(step["curation"], step["kept"]) for step in chain] == [("dedup", len(dedup)), ("dedup_hk", 40)]
    assert chain[1]["fraction_kept"] == pytest.approx(40 / len(dedup))
    assert chain[1]["fraction_of_pool"] == pytest.approx(40 / pool_size)

    # The frozen baseline: the backbone's probe embeddings evaluated as they are, once per seed, never compared.
    frozen = json.loads((root / "evaluate" / "frozen" / "dino_alone" / "seed0" / "metrics.json").read_text())
    train = read_table(root / "features" / "dino" / "probe_train.parquet")
    test = read_table(root / "features" / "dino" / "probe_test.parquet")
    assert frozen["metrics"]["knn_accuracy"] == pytest.approx(  # the schema's defaults: k 20, T 0.07
        brute_force_knn(train.vectors, train.labels, test.vectors, test.labels, 20, 0.07), abs=1e-9)
    assert not list(root.glob("pretrain/*/dino_alone"))
    verdict = json.loads((tmp_path / "results" / "three-spaces" / "verdict.json").read_text())
    assert {c["ssl"] for c in verdict["comparisons"]} == {"simclr"}

