"""The test bench: everything that stands in for the world around pdscaler, never shipped to a cluster.

- `emulator/`: the emulated serving graph (OpenAI API, Dynamo's metric names, /scale subresources);
- `sim/`: the replay simulator behind `pdscaler backtest` (fluid pools, GPU nodes, baseline policies);
- `hpa.py`, `keda.py`: the HPA's arithmetic and KEDA's polling, emulated;
- `traces.py`: the trace loaders (Azure, Mooncake, ServeGen rate curves);
- `demo.py`: `pdscaler demo`, the whole loop on one machine;
- `cli.py`: the bench's subcommands (demo, emulate, backtest, forecast-eval), plugged into the
  `pdscaler` command through the `pdscaler.commands` entry point.

The bench imports the product (scaler/, forecasting/); the product never imports the bench
(tests/test_import_direction.py).
"""
