"""The node's labels: pure functions of the GPU inventory and the label config."""
