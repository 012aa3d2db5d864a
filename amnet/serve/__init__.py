"""`amnet-deploy serve`: live talking-head streams on Ray Serve (app), their wire protocol (protocol), per-stream
state (session), the batched model (batcher, model), metrics, the local launcher (local) and the cluster
config (config). Needs the `serve` extra: pip install 'amnet-deploy[serve]'."""
