"""Test-wide settings."""

import torch

# The tests evaluate many small tensors; torch's intra-op threads only add contention on a 2-core machine
# running pytest-xdist workers, so each test process uses one thread.
torch.set_num_threads(1)
