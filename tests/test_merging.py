import pytest
import torch

from common.merging import LearnedMerge, MergeConfig, build_merge, methods, task_vectors, topk_mask
from common.settings import REGISTRY


@pytest.fixture(autouse=True)
def sparsify_everything(monkeypatch, request):
    """Hand-computed cases use tiny tensors: let every tensor be sparsified there."""
    if "small_tensor" not in request.node.name:
        monkeypatch.setattr(methods, "SMALL_TENSOR", 1)

BASE = {"w": torch.zeros(4), "b": torch.zeros(2)}
FT = [
    {"w": torch.tensor([1.0, -2.0, 0.5, 0.0]), "b": torch.tensor([1.0, 1.0])},
    {"w": torch.tensor([3.0, 1.0, -0.5, 0.1]), "b": torch.tensor([-1.0, 3.0])},
]


def merged(cfg):
    return build_merge(cfg, BASE, FT).merged(BASE)


def test_task_vectors_and_key_check():
    base = {"w": torch.ones(4), "b": torch.ones(2)}
    tv = task_vectors(base, FT)
    assert torch.equal(tv[0]["w"], torch.tensor([0.0, -3.0, -0.5, -1.0]))
    with pytest.raises(ValueError, match="keys differ"):
        task_vectors(base, [{"w": torch.zeros(4)}])
    with pytest.raises(ValueError, match="shape"):
        task_vectors(base, [{"w": torch.zeros(3), "b": torch.zeros(2)}])


def test_average_and_task_arithmetic():
    m = merged(MergeConfig("average"))
    assert torch.allclose(m["w"], torch.tensor([2.0, -0.5, 0.0, 0.05]))
    m = merged(MergeConfig("task_arithmetic", lam=0.5))
    assert torch.allclose(m["b"], torch.tensor([0.0, 2.0]))


def test_topk_mask():
    assert topk_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5).tolist() == [False, True, True, False]


def test_ties_per_tensor_by_hand():
    # w, density 0.5: keep 2 largest |.| per task: t1 -> [1,-2,0,0], t2 -> [3,1,0,0]
    # elected sign: [+, -(sum -1)] -> coord0: both agree -> (1+3)/2 = 2; coord1: only t1 -> -2
    # b, density 0.5 (1 of 2): t1 -> [1,0] (tie, topk keeps one), t2 -> [0,3]
    m = merged(MergeConfig("ties", lam=1.0, density=0.5, scope="tensor"))
    assert torch.allclose(m["w"], torch.tensor([2.0, -2.0, 0.0, 0.0]))
    assert torch.allclose(m["b"].sum(), torch.tensor(4.0)) and m["b"][1] == 3.0


def test_ties_model_scope_differs():
    # over the whole model the top half of each task is chosen among all 6 entries, so b
    # competes with w and the kept entries differ from the per-tensor choice
    m_model = merged(MergeConfig("ties", lam=1.0, density=0.5, scope="model"))
    m_tensor = merged(MergeConfig("ties", lam=1.0, density=0.5, scope="tensor"))
    assert not torch.allclose(torch.cat([m_model["w"], m_model["b"]]),
                              torch.cat([m_tensor["w"], m_tensor["b"]]))


def test_dare_rescale_and_determinism():
    cfg = MergeConfig("dare", lam=1.0, drop_rate=0.5, seed=3)
    a, b = merged(cfg), merged(cfg)
    assert torch.equal(a["w"], b["w"])
    init = build_merge(cfg, BASE, FT)
    for k, tv in enumerate(init.vectors):
        kept = tv["w"] != 0
        assert torch.allclose(tv["w"][kept], 2.0 * FT[k]["w"][kept])
    with pytest.raises(ValueError, match="drop_rate"):
        build_merge(MergeConfig("dare", drop_rate=1.0), BASE, FT)


def test_dare_with_ties_base():
    init = build_merge(MergeConfig("dare", drop_rate=0.0, dare_base="ties", density=0.5), BASE, FT)
    ties = build_merge(MergeConfig("ties", density=0.5), BASE, FT)
    for a, b in zip(init.vectors, ties.vectors):
        assert torch.allclose(a["w"], b["w"])


def test_localize_stitch_by_hand():
    # density 0.5 on w: t1 keeps idx 0,1; t2 keeps idx 0,1 -> overlap divided by 2
    m = merged(MergeConfig("localize_stitch", density=0.5))
    assert torch.allclose(m["w"], torch.tensor([2.0, -0.5, 0.0, 0.0]))


def test_pcb_keeps_top_fraction_and_normalises():
    init = build_merge(MergeConfig("pcb", density=0.5), BASE, FT)
    m = init.merged(BASE)
    assert torch.isfinite(m["w"]).all()
    # masks are min-max normalised into [0, 1] and divided by their sum: merged entries are
    # convex combinations of the (clamped) task values, so they lie between min and max
    lo = torch.minimum(FT[0]["w"], FT[1]["w"]) - 1e-6
    hi = torch.maximum(FT[0]["w"], FT[1]["w"]) + 1e-6
    assert ((m["w"] >= torch.minimum(lo, torch.zeros(4))) & (m["w"] <= torch.maximum(hi, torch.zeros(4)))).all()


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown merge method"):
        build_merge(MergeConfig("bogus"), BASE, FT)


def test_learned_merge_task_layer_and_tensor_wise():
    init = build_merge(MergeConfig("task_arithmetic", lam=0.5), BASE, FT)
    lm = LearnedMerge(BASE, init, "task")
    assert torch.allclose(lm.merged_state()["w"], init.merged(BASE)["w"])
    lw = LearnedMerge(BASE, init, "layer", {"w": "g1", "b": "g2"})
    assert lw.weights.shape == (2, 2)
    with torch.no_grad():
        lw.weights[lw.group_names.index("g2")] = torch.tensor([1.0, 0.0])
    out = lw.merged_state()
    assert torch.allclose(out["b"], FT[0]["b"]) and torch.allclose(out["w"], init.merged(BASE)["w"])
    out["w"].sum().backward()
    assert lw.weights.grad is not None and lw.weights.grad.abs().sum() > 0
    tw = LearnedMerge(BASE, init, "tensor")
    assert tw.group_names == list(BASE) and tw.weights.shape == (len(BASE), 2)
    with torch.no_grad():
        tw.weights[tw.group_names.index("w")] = torch.tensor([0.0, 1.0])
    out = tw.merged_state()
    assert torch.allclose(out["w"], FT[1]["w"]) and torch.allclose(out["b"], init.merged(BASE)["b"])
    with pytest.raises(ValueError, match="unknown granularity"):
        LearnedMerge(BASE, init, "row")  # type: ignore[arg-type]


def test_learned_merge_residual_is_added_and_trained():
    init = build_merge(MergeConfig("task_arithmetic", lam=0.5), BASE, FT)
    assert LearnedMerge(BASE, init, "task").residual is None  # the paper: merging weights only
    lm = LearnedMerge(BASE, init, "task", residual=True)
    assert torch.allclose(lm.merged_state()["w"], init.merged(BASE)["w"])  # residual starts at 0
    with torch.no_grad():
        lm.residual[lm.names.index("b")].copy_(torch.tensor([0.25, -1.0]))
    out = lm.merged_state()
    assert torch.allclose(out["b"], init.merged(BASE)["b"] + torch.tensor([0.25, -1.0]))
    (out["w"].sum() + out["b"].sum()).backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in lm.residual)
    assert lm.weights.grad.abs().sum() > 0


def test_a_parameter_the_method_does_not_read_is_refused():
    with pytest.raises(ValueError, match="density is not a parameter of task_arithmetic"):
        MergeConfig("task_arithmetic", density=0.5)
    with pytest.raises(ValueError, match="lam is not a parameter of localize_stitch"):
        MergeConfig("localize_stitch", lam=0.5)
    MergeConfig("ties", lam=0.5, density=0.5)


@pytest.mark.parametrize("method", ["ties", "dare", "pcb", "localize_stitch"])
def test_small_tensors_are_never_sparsified(method):
    base = {"gate": torch.zeros(1), "w": torch.zeros(32)}
    ft = [{"gate": torch.tensor([0.4]), "w": torch.linspace(-1, 1, 32)},
          {"gate": torch.tensor([0.2]), "w": torch.linspace(1, -1, 32)}]
    own = REGISTRY[method].params
    settings = {k: v for k, v in {"lam": 1.0, "drop_rate": 0.9, "density": 0.1}.items() if k in own}
    init = build_merge(MergeConfig(method, **settings), base, ft)
    gate = init.merged(base)["gate"]
    expected = 1.0 * (0.4 + 0.2) if method == "dare" else (0.4 + 0.2) / 2
    assert torch.allclose(gate, torch.tensor([expected]))
