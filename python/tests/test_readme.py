"""The README's Python examples run as written (the torch one with a small model and image)."""

import pathlib
import re

from conftest import torch_or_skip

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def blocks():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python (NumPy and PyTorch)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_both_examples():
    found = blocks()
    assert len(found) == 2 and "MumfordShahLoss" in found[0] and "msloss.energy" in found[1]


def test_numpy_example_runs():
    exec(compile(blocks()[1], "README.md", "exec"), {})


def test_torch_example_runs():
    torch = torch_or_skip()
    model = torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.rand(2, 1, 16, 16)
    ns = {"model": model, "x": x}
    exec(compile(blocks()[0], "README.md", "exec"), ns)
    assert ns["loss"].ndim == 0 and model.weight.grad is not None and model.weight.grad.abs().sum() > 0
