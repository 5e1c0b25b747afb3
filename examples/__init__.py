"""Worked examples: a researcher's own neurons, each trained in LeNet and checked in float64."""
