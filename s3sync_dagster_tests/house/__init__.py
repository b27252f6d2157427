"""The house: layers, public names only, the benchmarks' smoke run."""
