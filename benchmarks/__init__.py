"""Measurement tools: ``bench.py`` (the project against the authors' loop, the dense-ANN floor and
its peers), and the scripts that study one aspect of the speed (benchmarks/README.md)."""
