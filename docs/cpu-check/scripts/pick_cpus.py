"""Two CPUs on distinct physical cores of one package: from the first allowed CPU, or with `last` from the last
(away from CPU 0, which takes most interrupts)."""
import os, sys
def key(c):
    t = f"/sys/devices/system/cpu/cpu{c}/topology/"
    try:
        return open(t + "physical_package_id").read().strip(), open(t + "core_id").read().strip()
    except OSError:
        return "?", str(c)
cpus = sorted(os.sched_getaffinity(0), reverse=sys.argv[1:] == ["last"])
pick = [cpus[0]] + [c for c in cpus[1:] if key(c)[0] == key(cpus[0])[0] and key(c) != key(cpus[0])][:1]
print(",".join(map(str, sorted(pick))))
