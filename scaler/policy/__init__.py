"""The policy layer: rules applied to the capacity rule's raw need, one module per rule."""
