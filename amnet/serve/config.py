"""The app as a Ray Serve config (the file `serve build` writes) for `serve deploy` on an existing cluster.

The token is not in the file: the cluster's nodes read it from AMNET_SERVE_TOKEN (`build_app`), set where Ray
runs (e.g. `AMNET_SERVE_TOKEN=... ray start --head`, or a KubeRay secret as an env var).
"""
from __future__ import annotations

from amnet.core.fileio import write_text
from amnet.serve.local import APP_NAME, ServeOptions, check

HEADER = """\
# amnet-deploy serve: a Ray Serve config (serve build format). On a cluster whose nodes have amnet-deploy[serve]
# installed and the model at the path below:  AMNET_SERVE_TOKEN=... serve deploy THIS_FILE
# http_options.host is loopback: set 0.0.0.0 (behind your TLS proxy) for clients on other machines.
"""


def serve_config(opts: ServeOptions) -> dict:
    from amnet.serve.app import replica_options

    check(opts)
    options = replica_options(opts.streams, opts.threads, opts.replicas)
    args = {k: v for k, v in opts.app_args().items() if v is not None}
    return {"proxy_location": "EveryNode",
            "http_options": {"host": opts.host, "port": opts.port},
            "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": "amnet.serve.app:build_app",
                              "args": args,
                              "deployments": [{"name": "AmnetReplica", **options}]}]}


def write_config(opts: ServeOptions, path: str) -> str:
    import yaml

    write_text(path, HEADER + yaml.safe_dump(serve_config(opts), sort_keys=False))
    return path
