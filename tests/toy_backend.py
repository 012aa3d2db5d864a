"""A toy backend, registered from a test only (AMNET_BACKENDS=tests.toy_backend): the "identity" runtime.

Its builder copies each FP32 ONNX export to a ``.identity`` file; its runner runs
that file with ONNX Runtime. Nothing else in the project knows it exists: if it
shows up in build, infer, parity, bench and choose, the registry is the one place.
"""
import shutil

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from runtimes.onnxruntime_runner import OnnxRuntimeRunner
from runtimes.registry import Backend, Requirement, register


class IdentityRunner(OnnxRuntimeRunner):
    name = "identity"


def build(onnx_files, out_dir, opts):
    with Stage(out_dir) as stage:
        for f in onnx_files:
            name = artifacts.logical_name(f).replace(".onnx", "_copy.identity")
            pending = stage.path(name)
            shutil.copyfile(f, pending)
            entry = next(a for a in artifacts.read(f.parent)["artifacts"] if a["file"] == f.name)
            stage.add({**{k: entry[k] for k in ("part", "gc_form", "batch", "resolution")}, "name": name,
                       "runtime": "identity", "precision": "fp32"}, [pending])
        return artifacts.publish(stage)


register(Backend("identity", (".identity",), IdentityRunner, precisions=(Precision.FP32,), builder=build,
                 requires=(Requirement("onnxruntime"),), hint="pip install onnxruntime",
                 description="a copy of the FP32 ONNX, run by ONNX Runtime (test only)"))
