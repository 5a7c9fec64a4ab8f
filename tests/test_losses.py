import math

import pytest
import torch
import torch.nn.functional as F

from common.distill import LossConfig, TeacherSignal, entropy_loss, kd_loss, merge_loss, mse_loss, rec_loss


def test_rec_loss_uses_teacher_top_item():
    z = torch.tensor([[0.0, 1.0, 0.0]])
    teacher = TeacherSignal(torch.tensor([[0.1, 0.2, 0.9]]), 3)
    expected = -math.log(math.exp(0) / (2 * math.exp(0) + math.exp(1)))
    assert math.isclose(float(rec_loss(z, teacher, 1.0)), expected, rel_tol=1e-6)


def test_kd_full_and_topk():
    z = torch.tensor([[0.5, 0.1, -0.2]])
    t = torch.tensor([[0.3, 0.6, 0.0]])
    tau = 0.5
    p = F.softmax(t / tau, 1)
    q = F.softmax(z / tau, 1)
    expected = tau ** 2 * float((p * (p.log() - q.log())).sum())
    assert math.isclose(float(kd_loss(z, TeacherSignal(t, 3), tau)), expected, rel_tol=1e-5)
    assert float(kd_loss(t, TeacherSignal(t, 3), tau)) == pytest.approx(0.0, abs=1e-7)
    top = TeacherSignal(torch.tensor([[0.6, 0.3]]), 3, torch.tensor([[1, 0]]))
    p2 = F.softmax(torch.tensor([0.6, 0.3]) / tau, 0)
    q2 = q[0, [1, 0]]
    expected2 = tau ** 2 * float((p2 * (p2.log() - q2.log())).sum())
    assert math.isclose(float(kd_loss(z, top, tau)), expected2, rel_tol=1e-5)


def test_entropy_and_mse():
    z = torch.zeros(1, 4)
    assert math.isclose(float(entropy_loss(z, 1.0)), math.log(4), rel_tol=1e-6)
    t = TeacherSignal(torch.ones(1, 4), 4)
    assert math.isclose(float(mse_loss(z, t)), 1.0)


def test_merge_loss_weights_and_errors():
    z = torch.tensor([[0.5, 0.1, -0.2]])
    t = TeacherSignal(torch.tensor([[0.3, 0.6, 0.0]]), 3)
    cfg = LossConfig(rec_weight=2.0, kd_weight=10.0, temperature=0.5, rec_temperature=0.5)
    terms = merge_loss(z, t, cfg)
    assert torch.allclose(terms["total"], 2 * terms["rec"] + 10 * terms["kd"])
    with pytest.raises(ValueError, match="teacher"):
        merge_loss(z, None, LossConfig())
    only_entropy = merge_loss(z, None, LossConfig(rec_weight=0, kd_weight=0, entropy_weight=1))
    assert set(only_entropy) == {"entropy", "total"}


def test_teacher_signal_validation():
    with pytest.raises(ValueError, match="out of range"):
        TeacherSignal(torch.zeros(2, 2), 5, torch.tensor([[0, 9], [1, 2]])).validate(2)
    with pytest.raises(ValueError, match="non-finite"):
        TeacherSignal(torch.tensor([[float("nan"), 0.0]]), 2).validate(1)
    with pytest.raises(ValueError, match="float32"):
        TeacherSignal(torch.zeros(3, 2), 2).validate(2)
