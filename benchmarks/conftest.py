"""Every pytest-benchmark JSON names the CPU and the ISA oneDNN used (ONEDNN_MAX_CPU_ISA included): bars.py reads it."""


def pytest_benchmark_update_machine_info(config, machine_info):
    from amnet.core.cpu import isa, isa_name

    info = isa()
    machine_info["amnet_isa"] = {**info, "best": isa_name(info)}
