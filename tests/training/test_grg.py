"""Retrieval-guided gradient resetting: hand-made cases with known reset sets."""

import torch

from training.grg import DescriptorMemory, GradientResetter, reset_indicator_gradients, step_reset_mask


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


def test_reset_set_is_cumulative_and_budget_stops_growth():
    torch.manual_seed(0)
    resetter = GradientResetter([4], memory_size=16, topk=1, ratio=0.25)
    weak3 = torch.tensor([[1.0, 1.0, 1.0, 0.01]])
    weak0 = torch.tensor([[0.01, 1.0, 1.0, 1.0]])
    teacher = torch.ones(1, 4)
    assert resetter.update([teacher], [weak3]) == 1
    assert resetter.update([teacher], [weak0]) == 1
    assert resetter.masks[0].tolist() == [True, False, False, True]  # channel 3 stays reset
    capped = GradientResetter([4], memory_size=16, topk=1, ratio=0.25,
                              can_grow=lambda masks: int(masks[0].sum()) <= 1)
    capped.update([teacher], [weak3])
    assert capped.update([teacher], [weak0]) == 0 and not capped.growing
    assert capped.masks[0].tolist() == [False, False, False, True]


def test_resetter_state_round_trip():
    a = GradientResetter([3, 2], memory_size=8, topk=1, ratio=0.5)
    a.update([torch.rand(2, 3), torch.rand(2, 2)], [torch.rand(2, 3), torch.rand(2, 2)])
    b = GradientResetter([3, 2], memory_size=8, topk=1, ratio=0.5)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks, strict=False))
    assert torch.equal(a.memories[0].contents(), b.memories[0].contents())
