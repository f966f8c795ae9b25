"""Pretraining: every method trains in-process, and a killed Ray Train job resumes to the same weights."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from workflow.config import validate
from workflow.pretrain.augment import build_augment
from workflow.pretrain.methods import METHODS, Method, resolved
from workflow.pretrain.models import build_encoder
from workflow.pretrain.optim import LARS, build_optimizer
from workflow.pretrain.train import FAIL_AT_STEP_ENV, lr_at, run_pretrain


@pytest.mark.parametrize("name", METHODS)
def test_each_method_trains_in_process(name: str) -> None:
    params = resolved(validate({"method": name, "steps": 20, "projector_hidden_dim": 64}, "ssl"), 200)
    spec = {"input_kind": "signal", "input_dim": 40, "embedding_dim": 32}
    torch.manual_seed(0)
    method = Method(build_encoder(spec), params, 32)
    opt = build_optimizer(params["optimizer"], method.module.parameters(), 1e-3, 0.0)
    augment = build_augment("signal")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 40, generator=gen)
    first = None
    for step in range(6):
        v0, v1 = (augment(x, gen), augment(x, gen)) if method.uses_augmentation else (x, x.roll(1, 0))
        out = method.train_step(method.module, opt, v0, v1, step, 20, 1e-3)
        scalars = out.scalars()
        assert all(np.isfinite(v) for v in scalars.values())
        first = scalars if first is None else first
    expected_terms = {"simclr": {"nt_xent"}, "byol": {"cosine"}, "barlowtwins": {"on_diagonal", "off_diagonal"},
                      "vicreg": {"invariance", "variance", "covariance"}, "swav": {"swapped_ce"},
                      "tldr": {"on_diagonal", "off_diagonal"},
                      "dino": {"cross_entropy", "teacher_entropy", "teacher_temperature"}}[name]
    assert set(first) == {"loss"} | expected_terms


def test_lars_trust_ratio_scales_weight_updates() -> None:
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    b = torch.nn.Parameter(torch.zeros(2))
    w.grad, b.grad = torch.full((2, 2), 10.0), torch.ones(2)
    LARS([w, b], lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.001).step()
    # update = eta * ||w|| / ||g|| * g = 0.001 * 4 / 20 * 10 = 0.002; biases get plain SGD.
    assert torch.allclose(w, torch.full((2, 2), 2.0 - 0.002))
    assert torch.allclose(b, -torch.ones(2))



@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_scope_weights_exempts_biases_and_norms(name: str) -> None:
    """`weights`: a weight matrix decays as with `all`; a bias and a norm scale with zero gradient stay put, as
    with no weight decay at all (AdamW: p *= 1 - lr * wd; SGD: the gradient gains wd * p)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))

    def step(weight_decay: float, scope: str) -> dict[str, torch.Tensor]:
        copy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
        copy.load_state_dict(module.state_dict())
        for p in copy.parameters():
            p.grad = torch.zeros_like(p)
        build_optimizer(name, copy.parameters(), 0.1, weight_decay, weight_decay_scope=scope).step()
        return {k: v.detach().clone() for k, v in copy.named_parameters()}

    decay_all, decay_weights, none = step(0.5, "all"), step(0.5, "weights"), step(0.0, "all")
    assert torch.allclose(decay_weights["0.weight"], decay_all["0.weight"])
    assert torch.allclose(decay_all["0.weight"], module[0].weight * (1 - 0.1 * 0.5))
    for key in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(decay_weights[key], none[key])
        assert not torch.equal(decay_all[key], none[key]) or key == "1.bias"  # LayerNorm's bias starts at 0
    with pytest.raises(ValueError, match="weight_decay_scope"):
        build_optimizer(name, module.parameters(), 0.1, 0.5, weight_decay_scope="biases")


def test_byol_predictor_lr_scale_gives_the_predictor_its_own_learning_rate() -> None:
    """`byol_predictor_lr_scale: 10`: the predictor's group steps at 10x the scheduled lr, the rest at 1x; every
    parameter is in exactly one group, split again by `weight_decay_scope`. At 1 (the default) one group, as before."""
    spec = {"input_kind": "signal", "input_dim": 40, "embedding_dim": 16}
    x = torch.randn(32, 40, generator=torch.Generator().manual_seed(0))
    for scale, scope, n_groups in ((1.0, "all", 1), (10.0, "all", 2), (10.0, "weights", 4)):
        params = resolved(validate({"method": "byol", "steps": 4, "projector_hidden_dim": 32,
                                    "byol_predictor_lr_scale": scale, "weight_decay_scope": scope}, "ssl"), 64)
        torch.manual_seed(0)
        method = Method(build_encoder(spec), params, 16)
        opt = build_optimizer("adamw", method.module.optimizer_groups(), 1e-3, 0.01, weight_decay_scope=scope)
        grouped = [id(p) for g in opt.param_groups for p in g["params"]]
        assert sorted(grouped) == sorted(id(p) for p in method.module.parameters())
        assert len(opt.param_groups) == n_groups
        method.train_step(method.module, opt, x, x.flip(1), 0, 4, 1e-3)
        predictor = {id(p) for p in method.module.predictor.parameters()}
        for group in opt.param_groups:
            in_predictor = {id(p) in predictor for p in group["params"]}
            if scale == 1.0:
                assert group["lr"] == pytest.approx(1e-3)
                continue
            assert len(in_predictor) == 1  # a group is all predictor or none of it
            assert group["lr"] == pytest.approx(1e-3 * (scale if in_predictor == {True} else 1.0))

def test_lr_schedule_warmup_then_cosine() -> None:
    total, peak = 100, 1.0
    lrs = [lr_at(s, total, peak, 0.1) for s in range(total)]
    assert lrs[9] == pytest.approx(peak)  # end of the 10-step warm-up
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert lrs[10] == pytest.approx(peak)  # cosine starts at the peak
    assert lrs[55] == pytest.approx(0.5 * peak, abs=0.02)
    assert lrs[-1] < 0.01


RESUME_PARAMS = {"method": "simclr", "steps": 40, "batch_size": 64, "embedding_dim": 16, "projector_hidden_dim": 32,
                 "num_workers": 2, "checkpoint_every": 1}  # two DDP ranks resume


def _train(pool: Path, selection: Path, out: Path, work: Path, **overrides: Any) -> list[dict[str, float]]:
    return run_pretrain(str(pool), str(selection), str(out / "encoder.safetensors"), str(out / "history.parquet"),
                        validate({**RESUME_PARAMS, **overrides}, "ssl"), seed=3, threads=2, work_root=str(work))


def _crash(pool: Path, selection: Path, out: Path, work: Path, after_step: int, **overrides: Any) -> None:
    """Train until the first checkpoint at or after ``after_step`` (epochs of 18 steps here), then fail."""
    os.environ[FAIL_AT_STEP_ENV] = str(after_step)
    try:
        with pytest.raises(Exception, match="simulated crash"):
            _train(pool, selection, out, work, **overrides)
    finally:
        del os.environ[FAIL_AT_STEP_ENV]
    assert not (out / "encoder.safetensors").exists()


@pytest.fixture(scope="module")
def straight_weights(tiny_pool: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("straight")
    _train(*tiny_pool, root, root / "work")
    return load_file(str(root / "encoder.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], path: Path) -> None:
    b = load_file(str(path))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.e2e
def test_killed_job_resumes_to_the_same_weights(tiny_pool: tuple[Path, Path], straight_weights: dict[str, torch.Tensor],
                                                tmp_path: Path) -> None:
    _crash(*tiny_pool, tmp_path, tmp_path / "work", after_step=10)
    assert list((tmp_path / "work").glob("*/checkpoints/step-*/manifest.json"))
    history = _train(*tiny_pool, tmp_path, tmp_path / "work")
    assert history[-1]["step"] == 40
    _assert_same_weights(straight_weights, tmp_path / "encoder.safetensors")


def test_one_cpu_worker_in_ray_train_local_mode_resumes_to_the_same_weights(tiny_pool: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    local = {"num_workers": None}  # one CPU worker: Ray Train's local mode, in this process
    _train(*tiny_pool, tmp_path / "straight", tmp_path / "work_straight", **local)
    _crash(*tiny_pool, tmp_path / "resumed", tmp_path / "work", after_step=10, **local)
    assert _train(*tiny_pool, tmp_path / "resumed", tmp_path / "work", **local)[-1]["step"] == 40
    _assert_same_weights(load_file(str(tmp_path / "straight" / "encoder.safetensors")),
                         tmp_path / "resumed" / "encoder.safetensors")


def test_killed_dino_job_resumes_to_the_same_teacher(tiny_pool: tuple[Path, Path], tmp_path: Path) -> None:
    """DINO saves its teacher's backbone; the teacher's own running statistics travel in the checkpoints."""
    dino = {"method": "dino", "num_workers": None, "projection_dim": 8, "dino_out_dim": 64, "dino_local_crops": 1}
    _train(*tiny_pool, tmp_path / "straight", tmp_path / "work_straight", **dino)
    _crash(*tiny_pool, tmp_path / "resumed", tmp_path / "work", after_step=10, **dino)
    assert _train(*tiny_pool, tmp_path / "resumed", tmp_path / "work", **dino)[-1]["step"] == 40
    _assert_same_weights(load_file(str(tmp_path / "straight" / "encoder.safetensors")),
                         tmp_path / "resumed" / "encoder.safetensors")


@pytest.mark.e2e
def test_a_tampered_checkpoint_is_set_aside_and_the_previous_one_resumes_exactly(
        tiny_pool: tuple[Path, Path], straight_weights: dict[str, torch.Tensor], tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    _crash(*tiny_pool, tmp_path, tmp_path / "work", after_step=20)
    newest, *older = sorted((tmp_path / "work").glob("*/checkpoints/step-*"), reverse=True)
    assert older, "the crash should leave two checkpoints"
    (newest / "rng1.json").write_bytes(b"\x80\x04\x95 not a random state")  # e.g. a pickle put in its place
    capfd.readouterr()
    _train(*tiny_pool, tmp_path, tmp_path / "work")
    out = capfd.readouterr().out
    assert f"{newest / 'rng1.json'} does not match its checksum" in out
    assert "set aside as" in out and not newest.parent.parent.exists()  # the work folder goes once the job succeeds
    _assert_same_weights(straight_weights, tmp_path / "encoder.safetensors")
