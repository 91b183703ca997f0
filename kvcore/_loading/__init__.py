"""Loading into a model: targets, packing, tensor parallelism, the plan, the copy, finalisation."""
