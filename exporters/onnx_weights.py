"""Load a module's weights back from exported ONNX files: how training continues a shipped
model whose checkpoints are gone (`--init`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx.numpy_helper
import torch


def load_exported_weights(module: torch.nn.Module, paths: Sequence[Path],
                          prefix: str = "") -> None:
    """Load module's parameters and buffers from the initializers of exported ONNX files (the
    way to continue training a shipped model whose checkpoints are gone). Each of the module's
    tensors must be an initializer named `prefix + its state-dict name` in at least one file,
    and files that share a name must agree on it. Raises ValueError naming what is missing:
    export may fold small weights into new constants, which makes a file unusable here."""
    found: dict[str, torch.Tensor] = {}
    for path in paths:
        for init in onnx.load(str(path)).graph.initializer:
            if not init.name.startswith(prefix):
                continue
            name = init.name.removeprefix(prefix)
            value = torch.from_numpy(onnx.numpy_helper.to_array(init).copy())
            if name in found and not torch.equal(found[name], value):
                raise ValueError(f"{path} disagrees with an earlier file on {name}")
            found[name] = value
    wanted = module.state_dict()
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"{', '.join(str(p) for p in paths)} do not hold {', '.join(missing)} "
                         f"by name (the export folded them into constants, or it is another "
                         f"network)")
    module.load_state_dict({name: found[name] for name in wanted})
