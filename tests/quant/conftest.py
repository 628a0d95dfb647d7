import pytest
import torch


@pytest.fixture
def tiny_r18():
    """iresnet18 at width 8 with non-trivial BatchNorm statistics (random weights)."""
    from qfair.models import create_model

    m = create_model("iresnet18", width=8)
    g = torch.Generator().manual_seed(0)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            if bn.weight is not None:
                with torch.no_grad():
                    bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return m.eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 112, 112, generator=g) * 2 - 1
