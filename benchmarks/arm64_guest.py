"""The aarch64 half of `benchmarks/arm64_check.py`: one model file on the inputs x86 saved, under emulation.

Run by the arm64 Python that arm64_check assembles (``qemu-aarch64 -L SYSROOT python3.11 THIS ...``),
with only numpy and the runtime's wheels on its path (no amnet import: amnet is not installed there). Each
sample is fed at the file's batch, as the x86 runners do (runtimes/litert_runner.py: the interpreter with its
default XNNPACK delegate and its signature; runtimes/executorch_runner.py: `executorch.runtime`). Writes the
stacked outputs (.npz, no pickle) and what ran (machine, versions, delegate) as JSON, each by a rename.

    python3.11 arm64_guest.py {litert|executorch} MODEL INPUTS.npz OUTPUTS.npz FACTS.json THREADS
"""
import json
import os
import platform
import sys
from importlib import metadata

import numpy as np

INPUTS = ("source", "audio", "pose", "eye")
OUTPUTS = ("face", "landmarks")


def run_litert(path, feeds, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    signature = interpreter.get_signature_runner()
    batch = int(signature.get_input_details()["source"]["shape"][0])
    outs = [signature(**{k: feeds[k][i:i + batch] for k in INPUTS}) for i in range(0, len(feeds["source"]), batch)]
    partitions = sum(o["op_name"] == "DELEGATE" for o in interpreter._get_ops_details())
    return ({name: np.concatenate([np.asarray(o[f"output_{j}"]) for o in outs]) for j, name in enumerate(OUTPUTS)},
            {"xnnpack_partitions": partitions, "wheels": _versions("ai-edge-litert", "numpy")})


def run_executorch(path, feeds, threads):
    import torch
    from executorch import runtime
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    program = runtime.Runtime.get().load_program(path, verification=runtime.Verification.InternalConsistency)
    method = program.load_method("forward")
    batch = int(method.metadata.input_tensor_meta(0).sizes()[0])
    outs = [method.execute([torch.from_numpy(np.ascontiguousarray(feeds[k][i:i + batch])) for k in INPUTS])
            for i in range(0, len(feeds["source"]), batch)]
    return ({name: np.concatenate([np.array(o[j].numpy()) for o in outs]) for j, name in enumerate(OUTPUTS)},
            {"backends": list(portable_lib._get_registered_backend_names()),
             "wheels": _versions("executorch", "torch", "numpy")})


def _versions(*names):
    return {n: metadata.version(n) for n in names}


def _replace(path, write):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(kind, model, inputs, outputs, facts, threads):
    with np.load(inputs, allow_pickle=False) as data:
        feeds = {k: np.ascontiguousarray(data[k], dtype=np.float32) for k in INPUTS}
    out, info = (run_litert if kind == "litert" else run_executorch)(model, feeds, int(threads))
    _replace(outputs, lambda f: np.savez(f, **out))
    info.update(machine=platform.machine(), python=platform.python_version())
    _replace(facts, lambda f: f.write(json.dumps(info).encode()))


if __name__ == "__main__":
    main(*sys.argv[1:])
