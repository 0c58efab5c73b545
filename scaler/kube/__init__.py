"""Cluster reads (read-only): replicas, readiness and rollouts per role, and who else scales them.

- api.py: the thin adapter around the kubernetes client (auth, GETs with a timeout, clear errors);
- targets.py: which /scale resource each role is (pure: config + the DGD's spec);
- replicas.py: desired / current / ready / updated replicas and the DGD's state (pure parsers);
- ownership.py: other HPAs, ScaledObjects or Dynamo's Planner on a role pdscaler scales (pure);
- watcher.py: the background thread that reads all of it on a cadence; the decision loop only
  reads its last snapshot, so a slow or failing API server never delays a decision.
"""
