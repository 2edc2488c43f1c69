"""Shared fixtures. Progress bars are off in tests; trained models are made once a session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("LURING_NO_PROGRESS", "1")
# Tests compare numbers and bytes across runs: the CLI's default precision (auto) would pick
# bfloat16 on CPUs with bf16 units and float32 elsewhere, so tests run float32 unless a test
# asks for another precision (tests/test_precision.py does).
os.environ.setdefault("LURING_PRECISION", "fp32")


@pytest.fixture(scope="session")
def mnist5k():
    """(x_train, y_train, x_test, y_test) of the embedded mnist-5k data set."""
    from luring.data import load

    x_tr, y_tr = load("mnist-5k", "train")
    x_te, y_te = load("mnist-5k", "test")
    return x_tr, y_tr, x_te, y_te


@pytest.fixture(scope="session")
def trained_mnist_target(mnist5k):
    """A table-2 MNIST target M trained on mnist-5k (2 epochs, seed 0, ~96% test accuracy),
    in eval mode with frozen parameters. Returns ``(model, x_test, y_test)``."""
    from luring.models import build

    x_tr, y_tr, x_te, y_te = mnist5k
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build("mnist-target")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(x_tr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x_te, y_te


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread (fastest, least disturbed by a busy machine),
    restoring the thread count afterwards. Use with ``pytest.mark.usefixtures``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
