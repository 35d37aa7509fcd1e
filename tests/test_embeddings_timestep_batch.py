"""timestep_batch: a timestep as an int, a float, a 0-d, (1,) or (B,) tensor becomes (B,); anything else is a ValueError."""
import numpy as np
import pytest
import torch

from unetlab.embeddings import timestep_batch


@pytest.mark.parametrize("timestep", [7, 7.0, np.int64(7), torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7, 7])])
def test_forms_that_work(timestep):
    t = timestep_batch(timestep, 3)
    assert t.shape == (3,)
    assert torch.equal(t.float(), torch.full((3,), 7.0))


def test_batch_of_one_and_distinct_values():
    assert timestep_batch(5, 1).shape == (1,)
    t = torch.tensor([1, 500, 999])
    assert timestep_batch(t, 3) is t
    assert timestep_batch(torch.tensor([0.5, 1.5]), 2).dtype == torch.float32


def test_device_argument():
    assert timestep_batch(3, 2, device="cpu").device.type == "cpu"
    assert timestep_batch(3, 2, device="meta").device.type == "meta"
    t = torch.zeros(2, device="meta")
    assert timestep_batch(t, 2, device="cpu").device.type == "meta"  # meta stays meta: shapes only


@pytest.mark.parametrize("shape", [(2,), (4,), (3, 1), (1, 3), (1, 1)])
def test_wrong_shapes(shape):
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        timestep_batch(torch.zeros(shape), 3)


@pytest.mark.parametrize("timestep", [True, False, "10", None, [1, 2, 3], (1,), {"t": 1}])
def test_not_a_timestep(timestep):
    with pytest.raises(ValueError, match="timestep"):
        timestep_batch(timestep, 3)


def test_bool_and_complex_tensors():
    with pytest.raises(ValueError, match="dtype"):
        timestep_batch(torch.tensor([True, False, True]), 3)
    with pytest.raises(ValueError, match="dtype"):
        timestep_batch(torch.zeros(3, dtype=torch.complex64), 3)
