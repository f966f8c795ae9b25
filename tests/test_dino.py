"""DINO (Caron et al. 2021): the loss against an independent computation, its invariances and temperatures, the
centre over 2 gloo workers, multi-crop views, and training in-process on signals, vectors and images."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workflow.config import config_hash, ssl_for_dataset, validate
from workflow.pretrain.augment import SignalAugment, VectorAugment, build_augment
from workflow.pretrain.dino import DINOHead, DINOLoss, MultiCrop, local_augment, teacher_temperature
from workflow.pretrain.methods import Method, resolved
from workflow.pretrain.models import build_encoder
from workflow.pretrain.optim import build_optimizer
from workflow.ui import free_port


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- independent reference


def reference_dino(teacher: list[np.ndarray], student: list[np.ndarray], center: np.ndarray, tau_t: float,
                   tau_s: float, m: float) -> tuple[float, np.ndarray]:
    """Caron et al. 2021 eq. (1)-(4) and Algorithm 1, one sample and one class at a time: the loss and the new centre.

    P_t = softmax((g_t - c) / tau_t), P_s = softmax(g_s / tau_s); L = mean over (global t, view v != t) of
    mean_n H(P_t, P_s) with H(a, b) = -sum_k a_k log b_k; c <- m c + (1 - m) mean of the teacher rows.
    """

    def softmax(row: np.ndarray) -> list[float]:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        return [v / sum(e) for v in e]

    terms = []
    for t, t_out in enumerate(teacher):
        for v, s_out in enumerate(student):
            if v == t:
                continue
            per_sample = []
            for n in range(t_out.shape[0]):
                p_t = softmax([(t_out[n, k] - center[k]) / tau_t for k in range(t_out.shape[1])])
                p_s = softmax([s_out[n, k] / tau_s for k in range(s_out.shape[1])])
                per_sample.append(-sum(a * math.log(b) for a, b in zip(p_t, p_s, strict=True)))
            terms.append(sum(per_sample) / len(per_sample))
    rows = [row for t_out in teacher for row in t_out]
    mean = [sum(r[k] for r in rows) / len(rows) for k in range(len(center))]
    return sum(terms) / len(terms), np.array([m * c + (1 - m) * mu for c, mu in zip(center, mean, strict=True)])


def _outputs(n: int = 3, k: int = 5, views: int = 4, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    teacher = [_randn(n, k, seed=seed + i) for i in range(2)]
    student = [_randn(n, k, seed=seed + 10 + i) for i in range(views)]
    return teacher, student


def test_loss_and_centre_match_the_paper_on_a_hand_sized_case() -> None:
    teacher, student = _outputs()
    loss_fn = DINOLoss(5, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_steps=4).double()
    with torch.no_grad():
        loss_fn.center.copy_(_randn(1, 5, seed=99) * 0.3)
    for step in range(6):  # through the warm-up (0.04, 0.05, 0.06, 0.07) and after it
        center = loss_fn.center[0].numpy().copy()
        tau_t = [0.04, 0.05, 0.06, 0.07, 0.07, 0.07][step]
        want, want_center = reference_dino([t.numpy() for t in teacher], [s.numpy() for s in student], center,
                                           tau_t, 0.1, 0.9)
        out = loss_fn(teacher, student, step)
        assert out.loss.item() == pytest.approx(want, rel=1e-10)
        assert out.terms["teacher_temperature"].item() == pytest.approx(tau_t)
        np.testing.assert_allclose(loss_fn.center[0].numpy(), want_center, rtol=1e-12, atol=1e-14)
    # Two views only (no local crops): each global view predicts the other.
    want, _ = reference_dino([t.numpy() for t in teacher], [s.numpy() for s in student[:2]],
                             loss_fn.center[0].numpy(), 0.07, 0.1, 0.9)
    assert loss_fn(teacher, student[:2], 10).loss.item() == pytest.approx(want, rel=1e-10)


def test_gradients_reach_every_student_view_and_never_the_teacher() -> None:
    teacher, student = _outputs()
    teacher = [t.clone().requires_grad_(True) for t in teacher]
    student = [s.clone().requires_grad_(True) for s in student]
    DINOLoss(5)(teacher, student).loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_teacher_temperature_schedule() -> None:
    assert [teacher_temperature(s, 4) for s in range(6)] == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    assert teacher_temperature(0, 0) == 0.07 and teacher_temperature(0, 1) == 0.04
    np.testing.assert_allclose([teacher_temperature(s, 30, 0.04, 0.07) for s in range(30)],
                               np.linspace(0.04, 0.07, 30))  # main_dino.py's schedule, per step here


# --------------------------------------------------------------------------- invariances and temperatures


def test_centering_removes_a_constant_shift_of_the_teacher_outputs() -> None:
    teacher, student = _outputs(seed=3)
    shift = _randn(1, 5, seed=4) * 10  # one vector added to every teacher output
    plain, shifted = DINOLoss(5).double(), DINOLoss(5).double()
    with torch.no_grad():
        shifted.center.copy_(shift)  # a centre that has seen the shifted stream
    for step in range(3):
        a = plain(teacher, student, step)
        b = shifted([t + shift for t in teacher], student, step)
        assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-10)
        np.testing.assert_allclose((shifted.center - plain.center).numpy(), shift.numpy(), rtol=1e-10)
    # From a zero centre the shift is absorbed geometrically: after k updates (1 - m^k) of it is in the centre.
    plain, shifted = DINOLoss(5).double(), DINOLoss(5).double()
    gaps = []
    for step in range(300):
        a = plain(teacher, student, step)
        b = shifted([t + shift for t in teacher], student, step)
        gaps.append(abs(a.loss.item() - b.loss.item()))
    np.testing.assert_allclose((shifted.center - plain.center).numpy(), (1 - 0.9**300) * shift.numpy(), rtol=1e-9)
    assert gaps[0] > 1e-2 and gaps[-1] < 1e-6
    # A constant added to every output dimension cancels in the softmax, with or without a centre.
    assert DINOLoss(5)([t + 3.0 for t in teacher], student).loss.item() == pytest.approx(
        DINOLoss(5)(teacher, student).loss.item(), rel=1e-10)


def test_sharpening_lower_teacher_temperature_gives_a_sharper_target() -> None:
    teacher, student = _outputs(seed=5)
    entropies = [DINOLoss(5, t, t)(teacher, student).terms["teacher_entropy"].item() for t in (1.0, 0.1, 0.04, 0.01)]
    assert entropies == sorted(entropies, reverse=True) and entropies[0] < math.log(5)
    # As tau_t -> 0 the target is the one-hot argmax of the centred teacher output.
    cold = DINOLoss(5, 1e-4, 1e-4)(teacher, student).loss.item()
    onehot = [torch.nn.functional.one_hot(t.argmax(1), 5).double() for t in teacher]
    want = np.mean([-(q * torch.log_softmax(s / 0.1, 1)).sum(1).mean().item()
                    for i, q in enumerate(onehot) for j, s in enumerate(student) if i != j])
    assert cold == pytest.approx(want, rel=1e-8)
    # A very high teacher temperature gives a uniform target: entropy log K.
    assert DINOLoss(5, 1e6, 1e6)(teacher, student).terms["teacher_entropy"].item() == pytest.approx(math.log(5))
    # The student temperature scales the student logits only: tau_s = 0.2 on s equals tau_s = 0.1 on s / 2.
    a = DINOLoss(5, student_temp=0.2)(teacher, student).loss.item()
    b = DINOLoss(5, student_temp=0.1)(teacher, [s / 2 for s in student]).loss.item()
    assert a == pytest.approx(b, rel=1e-12)


def test_invalid_arguments() -> None:
    for bad in (lambda: DINOLoss(0), lambda: DINOLoss(4, teacher_temp=0.0), lambda: DINOLoss(4, student_temp=-1.0),
                lambda: DINOLoss(4, warmup_steps=-1), lambda: DINOLoss(4, center_momentum=1.5),
                lambda: teacher_temperature(-1, 3), lambda: MultiCrop(VectorAugment(), -1),
                lambda: local_augment(SignalAugment(), (0.6, 0.3)), lambda: local_augment(SignalAugment(), None, 0.0)):
        with pytest.raises(ValueError):
            bad()
    teacher, student = _outputs()
    with pytest.raises(ValueError):
        DINOLoss(5)(teacher, student[:1])
    with pytest.raises(ValueError):
        DINOLoss(4)(teacher, student)
    with pytest.raises(TypeError):
        local_augment(object())


# --------------------------------------------------------------------------- distributed centre


def _worker(rank: int, world: int, port: int, teacher: list[torch.Tensor], student: list[torch.Tensor],
            split: list[int], out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = slice(sum(split[:rank]), sum(split[:rank + 1]))
    loss_fn = DINOLoss(teacher[0].shape[1], warmup_steps=2).double()
    result = []
    for step in range(3):
        s = [v[rows].clone().requires_grad_(True) for v in student]
        loss = loss_fn([t[rows] * (step + 1) for t in teacher], s, step).loss
        loss.backward()
        # DDP averages parameter gradients over ranks; do the same for the inputs' gradients.
        result.append((loss.item(), loss_fn.center.numpy().copy(), [(v.grad / world).numpy() for v in s]))
    out[rank] = result
    dist.destroy_process_group()


@pytest.mark.parametrize("split", [[4, 4], [5, 3]])
def test_centre_over_two_gloo_workers_is_the_centre_of_the_whole_batch(split: list[int]) -> None:
    """Each rank holds part of the batch; the centre is the global mean (an all-reduced sum over the global count,
    so unequal shares give it too), and with equal shares the rank-averaged loss and gradients are one process's."""
    teacher, student = _outputs(n=8, k=6, views=4, seed=30)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, free_port(), teacher, student, split, out), nprocs=2, join=True)
    whole = DINOLoss(6, warmup_steps=2, gather_distributed=False).double()
    for step in range(3):
        s = [v.clone().requires_grad_(True) for v in student]
        loss = whole([t * (step + 1) for t in teacher], s, step).loss
        loss.backward()
        for r in range(2):  # every rank holds the same, global centre
            np.testing.assert_allclose(out[r][step][1], whole.center.numpy(), rtol=1e-12, atol=1e-15)
        if split[0] == split[1]:
            assert np.mean([out[r][step][0] for r in range(2)]) == pytest.approx(loss.item(), rel=1e-12)
            for v in range(4):
                grad = np.concatenate([out[r][step][2][v] for r in range(2)])
                np.testing.assert_allclose(grad, s[v].grad.numpy(), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- head and multi-crop


def test_dino_head_is_a_normalised_bottleneck_and_a_weight_normalised_layer() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, hidden_dim=32, bottleneck_dim=8, out_dim=20)
    with torch.no_grad():
        head.last_layer.weight.mul_(5.0)  # the row norms do not matter (weight norm with gain 1)
    x = torch.randn(4, 16)
    out = head(x)
    assert out.shape == (4, 20)
    z = torch.nn.functional.normalize(head.mlp(x), dim=1)
    w = head.last_layer.weight / head.last_layer.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, z @ w.T)
    assert out.abs().max() <= 1 + 1e-6  # cosines
    assert sum(isinstance(m, torch.nn.Linear) for m in head.mlp) == 3


def test_multi_crop_views() -> None:
    gen = torch.Generator().manual_seed(0)
    # Images: two global views as the data's augmentation gives them, local crops at 7x7 (96/224 of 16 px).
    images = torch.rand(6, 3 * 16 * 16, generator=gen)
    image_aug = build_augment("image", [3, 16, 16], {})
    views = MultiCrop(image_aug, 3)(images, torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in views] == [(6, 768)] * 2 + [(6, 3, 7, 7)] * 3
    reference = torch.Generator().manual_seed(1)
    assert torch.equal(views[0], image_aug(images, reference)) and torch.equal(views[1], image_aug(images, reference))
    local = local_augment(image_aug)
    assert local.crop_scale == (0.05, 0.4) and local.output_size == (7, 7)
    assert image_aug.crop_scale == (0.2, 1.0) and image_aug.output_size == (16, 16)  # the globals' unchanged
    assert (views[2] >= 0).all() and (views[2] <= 1).all()
    # Signals: every view at the input length; local crops cover 0.22-0.63 of it.
    signals = torch.randn(5, 40, generator=gen)
    views = MultiCrop(SignalAugment(), 4)(signals, torch.Generator().manual_seed(2))
    assert [tuple(v.shape) for v in views] == [(5, 40)] * 6
    local = local_augment(SignalAugment())
    assert (local.min_crop, local.max_crop) == pytest.approx((math.sqrt(0.05), math.sqrt(0.4)))
    ramp = torch.linspace(0, 1, 40).repeat(3, 1)
    bare = SignalAugment(max_shift=0, scale=(1.0, 1.0), slope=0.0, noise=0.0, mask_fraction=0.0, min_crop=0.3,
                         max_crop=0.3)  # a crop of 30% of a ramp spans 0.3 of its range
    span = bare(ramp, torch.Generator().manual_seed(3))
    np.testing.assert_allclose((span[:, -1] - span[:, 0]).numpy(), 0.3, atol=1e-5)
    # Vectors: the vector augmentation at two strengths.
    views = MultiCrop(VectorAugment(), 2)(torch.randn(4, 8, generator=gen), torch.Generator().manual_seed(4))
    assert [tuple(v.shape) for v in views] == [(4, 8)] * 4
    local = local_augment(VectorAugment())
    assert (local.noise, local.mask_probability) == (0.2, 0.5)
    # No local views: two global views.
    assert len(MultiCrop(VectorAugment(), 0)(torch.randn(4, 8), torch.Generator().manual_seed(0))) == 2


def test_other_methods_keep_their_views_and_take_no_local_views() -> None:
    """Method.views for a two-view method draws exactly what the loop drew before multi-crop (same RNG stream)."""
    params = resolved(validate({"method": "simclr", "steps": 5, "projector_hidden_dim": 32}, "ssl"), 100)
    method = Method(build_encoder({"input_kind": "signal", "input_dim": 40, "embedding_dim": 16}), params, 16)
    x, augment = torch.randn(8, 40), build_augment("signal")
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    v0, v1 = method.views(x, augment, g1)
    assert torch.equal(v0, augment(x, g2)) and torch.equal(v1, augment(x, g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    opt = build_optimizer("adamw", method.module.parameters(), 1e-3, 0.0)
    with pytest.raises(ValueError, match="takes two views"):
        method.train_step(method.module, opt, v0, v1, 0, 5, 1e-3, local_views=[v0])


# --------------------------------------------------------------------------- training


SPECS = {
    "signal": {"input_kind": "signal", "input_dim": 40, "embedding_dim": 16},
    "vector": {"input_kind": "vector", "input_dim": 8, "embedding_dim": 16},
    "image": {"input_kind": "image", "input_dim": 3 * 12 * 12, "embedding_dim": 16, "image_shape": [3, 12, 12],
              "widths": [8, 16], "blocks": [1, 1]},
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_dino_trains_in_process(kind: str) -> None:
    spec = SPECS[kind]
    params = resolved(validate({"method": "dino", "steps": 20, "batch_size": 16, "projector_hidden_dim": 32,
                                "projection_dim": 8, "dino_local_crops": 2}, "ssl"), 64)
    assert params["dino_out_dim"] == 256 and params["dino_freeze_last_layer_steps"] == 2
    torch.manual_seed(0)
    method = Method(build_encoder(spec), params, spec["embedding_dim"])
    opt = build_optimizer(params["optimizer"], method.module.parameters(), 1e-2, 0.0)
    augment = build_augment(kind, spec.get("image_shape"), {})
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, spec["input_dim"], generator=gen)
    student0 = {k: v.clone() for k, v in method.module.state_dict().items()}
    teacher0 = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    last0 = method.module.projector.last_layer.weight.detach().clone()
    for step in range(4):
        v0, v1, *local_views = method.views(x, augment, gen)
        assert len(local_views) == 2
        out = method.train_step(method.module, opt, v0, v1, step, 20, 1e-2, local_views=local_views)
        assert all(np.isfinite(v) for v in out.scalars().values())
        assert set(out.terms) == {"cross_entropy", "teacher_entropy", "teacher_temperature"}
        if step == 1:  # frozen for the first two steps
            assert torch.equal(method.module.projector.last_layer.weight, last0)
    assert not torch.equal(method.module.projector.last_layer.weight, last0)
    changed = [k for k, v in method.module.state_dict().items() if not torch.equal(v, student0[k])]
    assert any(k.startswith("encoder.") for k in changed)
    # The teacher follows by EMA (and is no copy of the student); the centre is kept with it for checkpoints.
    teacher = method.teacher.state_dict()
    assert any(not torch.equal(teacher[k], teacher0[k]) for k in teacher if "weight" in k)
    student_params = list(method.module.encoder.parameters()) + list(method.module.projector.parameters())
    assert any(not torch.equal(t, s) for t, s in zip(method.teacher.parameters(), student_params, strict=True))
    # The result is the teacher's backbone (as DINO evaluates it), with the running statistics of its own passes.
    assert method.representation is method.teacher[0]
    bn = [k for k in teacher if k.endswith("running_mean")]
    assert bn and all(not torch.equal(teacher[k], method.module.state_dict()[k.replace("0.", "encoder.", 1)])
                      for k in bn if k.startswith("0."))
    state = method.target.state_dict()
    assert "loss.center" in state and state["loss.center"].abs().sum() > 0
    fresh = Method(build_encoder(spec), params, spec["embedding_dim"])
    fresh.target.load_state_dict(state)
    assert torch.equal(fresh.criterion.center, method.criterion.center)


def test_dino_keys_apply_to_dino_only() -> None:
    """Other methods' parameters and config hashes are unchanged by DINO's keys; image-only keys stay image-only."""
    signals = {"kind": "mnist1d-lt"}
    simclr = validate({"method": "simclr"}, "ssl")
    kept = ssl_for_dataset(simclr, signals)
    assert not any(k.startswith("dino_") for k in kept)
    assert config_hash(kept) == config_hash({k: v for k, v in kept.items() if not k.startswith("dino_")})
    dino = ssl_for_dataset(validate({"method": "dino"}, "ssl"), signals)
    assert {"dino_out_dim", "dino_teacher_temp", "dino_local_crops", "dino_local_crop_scale"} <= set(dino)
    assert "dino_local_crop_size" not in dino
    assert "dino_local_crop_size" in ssl_for_dataset(validate({"method": "dino"}, "ssl"), {"kind": "digits-images"})
    assert resolved(validate({"method": "dino"}, "ssl"), 4000)["dino_out_dim"] == 1000
    assert resolved(validate({"method": "dino"}, "ssl"), 10**7)["dino_out_dim"] == 65536
    assert resolved(validate({"method": "dino"}, "ssl"), 4000)["projection_dim"] == 256
