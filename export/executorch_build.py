"""The executorch backend's builder: checkpoint → `.pte` lowered to XNNPACK (torch.export, then
`to_edge_transform_and_lower` with the XnnpackPartitioner), FP32.

Each program's delegation is read from the lowered graph (`executorch.devtools.backend_debug`): the ops left
outside the delegate, and the share of the convolutions' multiply-adds XNNPACK took (a convolution still in
the top-level graph after lowering runs on the portable kernels).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from amnet.core import artifacts
from amnet.core.artifacts import Stage
from amnet.core.fileio import atomic_write, lazy_import, tool_versions
from export.mobile import artifact_name, entry, on_device_module, sample_inputs

HINT = "pip install 'amnet-deploy[mobile]' (executorch)"
_BOOKKEEPING = ("getitem", "alias_copy")  # outputs of a delegate call, views: no kernel of their own


def build(checkpoint: Path, out_dir: Path, opts) -> dict:
    lazy_import("executorch", HINT, None, "executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from amnet.checkpoint import load_checkpoint
    from amnet.core.progress import progress_bar, quiet_output
    from runtimes.executorch_runner import ExecuTorchRunner

    loaded = load_checkpoint(checkpoint)
    model = loaded.require_full()
    mobile = on_device_module(model)
    jobs = [(b, p) for b in opts.batches for p in opts.precisions]
    with Stage(out_dir) as stage:
        for batch, precision in progress_bar(jobs, desc="executorch", disable=not opts.progress, unit="variant"):
            with torch.no_grad(), quiet_output(not opts.progress):
                exported = torch.export.export(mobile, tuple(sample_inputs(batch, opts.resolution).values()))
                conv_macs = _conv_macs(exported.graph_module)
                lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
                delegation = delegation_of(lowered.exported_program().graph_module, conv_macs)
                program = lowered.to_executorch()
            name = artifact_name(batch, opts.resolution, "executorch", str(precision), ".pte")
            path = atomic_write(stage.path(name), lambda tmp, p=program: Path(tmp).write_bytes(p.buffer))
            with ExecuTorchRunner(path, threads=min(2, os.cpu_count() or 1), precision=str(precision)):
                pass  # it loads: the program and its XNNPACK blobs are valid here, before anything is published
            stage.add(entry(name, "executorch", str(precision), batch, opts.resolution, model, loaded, delegation,
                            weights=str(precision)), [path])
        return artifacts.publish(stage, {"source_checkpoint": loaded.path.name, "source_sha256": loaded.sha256,
                                         "versions": tool_versions("torch", "executorch")})


def _is_conv(node) -> bool:  # aten.conv2d once exported, aten.convolution in the edge dialect
    return node.op == "call_function" and re.search(r"aten\.(conv\dd|convolution)\b", str(node.target)) is not None


def _macs(node) -> int:
    """A convolution's multiply-adds: output elements × (input channels per group × kernel taps)."""
    return int(node.meta["val"].numel() * node.args[1].meta["val"][0].numel())


def _conv_macs(graph_module) -> list[int]:
    return [_macs(n) for n in graph_module.graph.nodes if _is_conv(n)]


def delegation_of(graph_module, conv_macs: list[int]) -> dict:
    """What the lowered graph left outside XNNPACK; the convs still in it are the ones off the delegate."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    off = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
           if b.non_delegated and not any(k in op for k in _BOOKKEEPING)}
    left = [_macs(n) for n in graph_module.graph.nodes if _is_conv(n)]
    total = sum(conv_macs)
    return {"delegate": "XNNPACK", "partitions": info.num_delegated_subgraphs,
            "ops": info.num_delegated_nodes + sum(off.values()), "ops_delegated": info.num_delegated_nodes,
            "off_delegate": off, "convs": len(conv_macs), "convs_off_delegate": len(left), "conv_macs": total,
            "conv_macs_delegated": 1.0 - sum(left) / total if total else 1.0}
