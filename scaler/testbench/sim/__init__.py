"""The replay simulator behind `pdscaler backtest`.

One concept per module:

- `workload.py`   a trace as demand per step (binned requests, or a rate curve with Poisson noise)
- `fluid.py`      the per-second fluid model of the prefill and decode pools
- `nodes.py`      GPU nodes: warm vs cold starts, balloon pods, billed GPU-time
- `sizing.py`     the replicas a second of demand needs within the SLOs (oracle, static sizing)
- `telemetry.py`  per-step records, and the Prometheus view a policy observes
- `actuation.py`  KEDA + HPA between a policy and its replicas
- `policies/`     the compared policies, one per module (oracle, static, reactive, planner, pdscaler)
- `engine_config.py` the pdscaler configuration the replay runs the real Engine with
- `replay.py`     one policy over a workload, scored
- `backtest.py`   several policies side by side: table, JSON, plot
- `history.py`    a graph's own history from Prometheus as the workload, and `as-run` (the replicas that ran)
"""
