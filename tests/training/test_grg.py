"""Retrieval-guided gradient resetting: hand-made cases with known reset sets."""

import torch

from training.arch_spec import ArchSpec
from training.budget import FlopsBudget
from training.cost import deployed_cost
from training.grg import (
    DescriptorMemory,
    GradientResetter,
    reset_indicator_gradients,
    step_reset_mask,
    step_reset_proposal,
)


def test_memory_is_fifo_and_wraps():
    mem = DescriptorMemory(size=4, dim=1)
    mem.push(torch.tensor([[1.0], [2.0], [3.0]]))
    assert mem.contents().flatten().tolist() == [1, 2, 3]
    mem.push(torch.tensor([[4.0], [5.0]]))  # 5 overwrites the oldest (1)
    assert sorted(mem.contents().flatten().tolist()) == [2, 3, 4, 5]
    mem.push(torch.arange(10.0).unsqueeze(1))  # larger than the memory: keeps the newest 4
    assert sorted(mem.contents().flatten().tolist()) == [6, 7, 8, 9]
    assert mem.count == 4


def test_step_mask_is_intersection_over_samples_and_neighbours():
    # p = 4 channels, ratio 0.5 -> 2 candidates per (sample, neighbour).
    # Student descriptors: sample 0 weak on channels {2, 3}; sample 1 weak on channels {1, 3}.
    student = torch.tensor([[1.0, 1.0, 0.1, 0.01], [1.0, 0.1, 1.0, 0.01]])
    teacher = torch.ones(2, 4)
    memory = torch.ones(3, 4)  # every neighbour weights all channels equally
    mask = step_reset_mask(teacher, student, memory, topk=2, ratio=0.5)
    # Only channel 3 is among the smallest contributions for BOTH samples.
    assert mask.tolist() == [False, False, False, True]


def test_step_mask_uses_neighbours_of_the_teacher_descriptor():
    # Student weak on channel 0 and 1 equally; which one is a candidate depends on the neighbour g.
    student = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    memory = torch.tensor([[1.0, 0.01, 1.0, 1.0],   # nearest to the teacher descriptor: channel 1 tiny
                           [0.01, 1.0, 1.0, 1.0]])  # far: channel 0 tiny
    mask = step_reset_mask(teacher, student, memory, topk=1, ratio=0.25)
    assert mask.tolist() == [False, True, False, False]
    # with both neighbours, channels 0 and 1 each lose one vote -> intersection empty
    assert not step_reset_mask(teacher, student, memory, topk=2, ratio=0.25).any()


def test_reset_gradients_zeroes_task_gradient_and_adds_lasso_everywhere():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    weight.grad = torch.tensor([[10.0, 10.0], [10.0, 10.0]])
    reset_indicator_gradients([weight], [torch.tensor([True, False])], lasso_lambda=0.5)
    # row 0 reset: only lasso 0.5 * [3, 4] / 5; row 1 keeps its task gradient plus 0.5 * [0, 1]
    assert torch.allclose(weight.grad, torch.tensor([[0.3, 0.4], [10.0, 10.5]]))


def test_reset_set_is_cumulative():
    resetter = GradientResetter([4], memory_size=16, topk=1, ratio=0.25)
    weak3 = torch.tensor([[1.0, 1.0, 1.0, 0.01]])
    weak0 = torch.tensor([[0.01, 1.0, 1.0, 1.0]])
    teacher = torch.ones(1, 4)
    assert resetter.update([teacher], [weak3]) == 1
    assert resetter.update([teacher], [weak0]) == 1
    assert resetter.masks[0].tolist() == [True, False, False, True]  # channel 3 stays reset


def _budget(spec, fraction, round_to=1):
    return FlopsBudget.for_spec(spec, deployed_cost(spec).flops, fraction, round_to)


def test_first_proposal_crossing_the_budget_still_resets_channels():
    # ResNet-18 width 1/16: inner widths 4,4,8,8,16,16,32,32. A proposal of every channel but one per block
    # would go far below a 60% budget: the resetter must admit part of it (smallest contribution first),
    # stop once the budget is met, and say so; never drop the whole proposal and stay empty.
    spec = ArchSpec(depth=18, width=1 / 16, embedding_dim=16, input_size=(64, 32), indicators=True)
    widths = [p for _, p in spec.blocks()]
    budget = _budget(spec, 0.6)
    resetter = GradientResetter(widths, memory_size=8, topk=1, ratio=0.99, budget=budget)
    generator = torch.Generator().manual_seed(0)
    teacher = [torch.rand(1, p, generator=generator) for p in widths]
    student = [torch.rand(1, p, generator=generator) for p in widths]
    added = resetter.update(teacher, student)
    assert added > 0 and not resetter.growing
    assert budget.flops(resetter.masks) <= budget.limit
    assert "FLOPs budget met" in resetter.stop_note
    # the step's proposal and scores, recomputed (the memory holds only this batch's teacher descriptors)
    proposal = [step_reset_proposal(t, s, t, 1, 0.99) for t, s in zip(teacher, student, strict=True)]
    admitted = [(float(score[c]), b, c) for b, (m, (_, score)) in enumerate(zip(resetter.masks, proposal, strict=True))
                for c in m.nonzero().flatten().tolist()]
    assert all(bool(proposal[b][0][c]) for _, b, c in admitted)  # only proposed channels
    assert added == len(admitted) < sum(int(m.sum()) for m, _ in proposal)  # part of the proposal, not all
    # minimal: un-resetting the last admitted channel (the highest score) would be over the budget again
    _, b, c = max(admitted)
    fewer = [m.clone() for m in resetter.masks]
    fewer[b][c] = False
    assert budget.flops(fewer) > budget.limit
    assert resetter.update(teacher, student) == 0  # frozen


def test_budget_admits_smallest_contributions_first():
    spec = ArchSpec(depth=18, width=1 / 16, embedding_dim=16, input_size=(64, 32), indicators=True)
    widths = [p for _, p in spec.blocks()]
    budget = _budget(spec, 0.9)
    empty = [torch.zeros(p, dtype=torch.bool) for p in widths]
    proposal = [torch.ones(p, dtype=torch.bool) for p in widths]
    proposal = [m.index_fill(0, torch.tensor([0]), False) for m in proposal]
    scores = [torch.arange(p, dtype=torch.float32) + 100 * b for b, p in enumerate(widths)]
    grown = budget.fill(empty, proposal, scores)
    assert budget.met(grown)
    admitted = [(float(s[c]), b, c) for b, (g, s) in enumerate(zip(grown, scores, strict=True))
                for c in g.nonzero().flatten().tolist()]
    rejected = [float(s[c]) for b, (g, p, s) in enumerate(zip(grown, proposal, scores, strict=True))
                for c in (p & ~g).nonzero().flatten().tolist()]
    assert admitted and rejected
    assert max(a for a, _, _ in admitted) < min(rejected)
    # dropping the most contributing admitted channel leaves the budget unmet: nothing extra was admitted
    _, b, c = max(admitted)
    fewer = [g.clone() for g in grown]
    fewer[b][c] = False
    assert not budget.met(fewer)


def test_decay_rule_drives_reset_rows_to_exact_zero_and_clears_momentum():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    resetter = GradientResetter([4], memory_size=4, topk=1, ratio=0.25, decay_steps=5)
    resetter.masks[0] = torch.tensor([False, True, False, False])
    norms = []
    for _ in range(6):
        weight.grad = torch.ones(4, 4)  # a task gradient that would keep every row alive
        resetter.apply([weight], lasso_lambda=0.1)
        assert weight.grad[1].abs().sum() == 0 and weight.grad[0].abs().sum() > 0
        optimizer.step()
        resetter.after_step([weight], optimizer)
        norms.append(float(weight.detach()[1].norm()))
        assert optimizer.state[weight]["momentum_buffer"][1].abs().sum() == 0
    assert norms[3] > 0 and norms[4] == 0.0 and norms[5] == 0.0  # linear: zero after exactly 5 steps
    assert torch.all(weight[[0, 2, 3]] != 0)


def test_reference_rule_leaves_reset_rows_bouncing_above_the_threshold():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    resetter = GradientResetter([4], memory_size=4, topk=1, ratio=0.25, rule="reference")
    resetter.masks[0] = torch.tensor([False, True, False, False])
    norms = []
    for _ in range(200):
        weight.grad = torch.zeros(4, 4)
        resetter.apply([weight], lasso_lambda=0.1)
        optimizer.step()
        resetter.after_step([weight], optimizer)
        norms.append(float(weight.detach()[1].norm()))
    # the constant-size subgradient overshoots zero: the row oscillates at ~1e-2, never below the 1e-5
    # pruning threshold, and is never exactly zero
    assert min(norms[100:]) > 1e-5 and max(norms[100:]) > 1e-3


def test_resetter_state_round_trip():
    generator = torch.Generator().manual_seed(0)
    a = GradientResetter([3, 2], memory_size=8, topk=1, ratio=0.5)
    a.update(*[[torch.rand(2, p, generator=generator) for p in (3, 2)] for _ in range(2)])
    a.masks[0].copy_(torch.tensor([True, False, True]))
    a.masks[1].copy_(torch.tensor([False, True]))
    a.reset_norms[0][0] = 0.5
    b = GradientResetter([3, 2], memory_size=8, topk=1, ratio=0.5)
    b.load_state_dict(a.state_dict())
    assert [m.tolist() for m in b.masks] == [[True, False, True], [False, True]]
    assert torch.equal(a.memories[0].contents(), b.memories[0].contents()) and a.memories[0].count == 2
    assert float(b.reset_norms[0][0]) == 0.5
    assert a.state_dict(with_memory=False)["memories"] is None


def test_growing_flag_survives_a_state_round_trip_and_memories_are_dropped():
    a = GradientResetter([3], memory_size=8, topk=1, ratio=0.5, decay_steps=4)
    a.update([torch.rand(2, 3)], [torch.rand(2, 3)], steps_left=2)  # too late to decay: closes
    assert not a.growing and "reset_decay_steps=4" in a.stop_note
    state = a.state_dict()
    assert state["memories"] is None
    b = GradientResetter([3], memory_size=8, topk=1, ratio=0.5, decay_steps=4)
    b.load_state_dict(state)
    assert not b.growing and b.stop_note == a.stop_note
    assert b.update([torch.rand(2, 3)], [torch.rand(2, 3)]) == 0
