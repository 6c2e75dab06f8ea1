"""The control plane's service layer: validate, act, commit, then dispatch."""
