"""The decay rule ends at exact zero: a reset row whose norm is within float rounding of one decay step (a
residue of the steps before) is set to zero, not scaled to a tiny non-zero row the export would keep."""

import torch

from training.grg import GradientResetter


def test_a_residue_within_rounding_of_one_step_becomes_exact_zero():
    weight = torch.nn.Parameter(torch.zeros(2, 3))
    with torch.no_grad():
        weight[0] = torch.tensor([1.0, 0.0, 0.0])  # norm 1 at reset: one decay step = 1 / 5 = 0.2
        weight[1] = torch.tensor([0.0, 1.0, 0.0])
    optimizer = torch.optim.SGD([weight], lr=0.0)  # only the decay moves the row
    resetter = GradientResetter([2], memory_size=2, topk=1, ratio=0.5, decay_steps=5)
    resetter.masks[0] = torch.tensor([True, False])
    weight.grad = torch.zeros_like(weight)
    resetter.apply([weight], lasso_lambda=0.0)
    optimizer.step()
    resetter.after_step([weight], optimizer)
    assert float(weight.detach()[0].norm()) == torch.tensor(0.8).item()  # one step of 0.2 taken
    with torch.no_grad():
        weight[0] = torch.tensor([0.2 * (1 + 1e-6), 0.0, 0.0])  # what float rounding may leave for the last step
    weight.grad = torch.zeros_like(weight)
    resetter.apply([weight], lasso_lambda=0.0)
    optimizer.step()
    resetter.after_step([weight], optimizer)
    assert torch.equal(weight.detach()[0], torch.zeros(3)) and torch.equal(weight.detach()[1], torch.tensor([0., 1, 0]))
